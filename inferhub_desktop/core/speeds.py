"""What this node's backend has shown it can do with each model, learned from finished requests.

Each figure is a mean whose samples lose half their weight every `HALF_LIFE_S`: the mean itself stays
put, but its weight falls, so the router leans back towards its prior for figures nobody has renewed
(a GPU that got busier, a driver update) and tries the node again. Pure state; time is a parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .wire.errors import MalformedRecord
from .wire.records import Fields

HALF_LIFE_S = 600.0
# How long a request holds the backend follows its load (queues, models swapped in and out) within
# seconds, not minutes.
BUSY_HALF_LIFE_S = 30.0
# A load shorter than this was a warm start (the time is scheduling), not a model load.
COLD_LOAD_MIN_S = 0.25
# Below this weight a mean is forgotten and no longer published.
_MIN_WEIGHT = 0.01
# Models a status may carry figures for, and the longest model key, as peers read them.
_MAX_MODELS = 4096
_MAX_MODEL_CHARS = 512


@dataclasses.dataclass(frozen=True)
class Figure:
    """A learnt mean and the weight of the samples behind it."""

    mean: float
    weight: float

    def to_json(self) -> list[float]:
        return [self.mean, self.weight]

    @classmethod
    def from_json(cls, value: Any, where: str) -> Figure:
        """Read [mean, weight]: a mean of at least 0 and a positive weight; raise MalformedRecord."""
        if not (isinstance(value, list) and len(value) == 2):
            raise MalformedRecord(f"{where} is not a [mean, weight] pair")
        pair = Fields({"mean": value[0], "weight": value[1]}, where)
        figure = cls(pair.number("mean"), pair.number("weight"))
        if figure.weight <= 0:
            raise MalformedRecord(f"{where} has no weight")
        return figure


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """What a node has shown for one model; None where it has shown nothing."""

    tokens_per_s: Figure | None = None
    tokens: Figure | None = None
    prompt_s: Figure | None = None
    load_s: Figure | None = None
    run_s: Figure | None = None

    def to_json(self) -> dict[str, list[float]]:
        return {
            field.name: figure.to_json()
            for field in dataclasses.fields(self)
            if (figure := getattr(self, field.name)) is not None
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> ModelFigures:
        fields = Fields(value, where)
        return cls(
            **{
                field.name: Figure.from_json(raw, f"{where}.{field.name}")
                for field in dataclasses.fields(cls)
                if (raw := fields.raw(field.name)) is not None
            }
        )


@dataclasses.dataclass(frozen=True)
class Speeds:
    """What a node has learnt of its backend's speed, as its status publishes it."""

    models: Mapping[str, ModelFigures] = dataclasses.field(default_factory=dict)
    # How long any request holds the backend, loads included.
    busy_s: Figure | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "models": {model: figures.to_json() for model, figures in self.models.items()},
            "busy_s": self.busy_s.to_json() if self.busy_s else None,
        }

    @classmethod
    def from_json(cls, fields: Fields) -> Speeds:
        busy = fields.raw("busy_s")
        return cls(
            models={
                model: ModelFigures.from_json(value, f"{fields.where}.models[{model!r}]")
                for model, value in fields.keyed("models", _MAX_MODELS, _MAX_MODEL_CHARS)
            },
            busy_s=Figure.from_json(busy, f"{fields.where}.busy_s") if busy is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one finished request showed; durations in seconds, None where the reply did not say."""

    total_s: float
    eval_count: int | None = None
    eval_s: float | None = None
    prompt_s: float | None = None
    load_s: float | None = None


@dataclasses.dataclass
class _DecayedMean:
    total: float = 0.0
    weight: float = 0.0
    at: float = 0.0
    half_life_s: float = HALF_LIFE_S

    def add(self, value: float, now: float) -> None:
        self._decay(now)
        self.total += value
        self.weight += 1.0

    def read(self, now: float) -> tuple[float, float] | None:
        """Return (mean, weight now), or None when the samples have faded away."""
        self._decay(now)
        if self.weight < _MIN_WEIGHT:
            return None
        return self.total / self.weight, self.weight

    def _decay(self, now: float) -> None:
        if now <= self.at:
            return  # a reading from before the last one: that stretch has decayed already
        factor = 0.5 ** ((now - self.at) / self.half_life_s)
        self.total *= factor
        self.weight *= factor
        self.at = now


@dataclasses.dataclass
class _ModelStats:
    tokens_per_s: _DecayedMean = dataclasses.field(default_factory=_DecayedMean)
    tokens: _DecayedMean = dataclasses.field(default_factory=_DecayedMean)
    prompt_s: _DecayedMean = dataclasses.field(default_factory=_DecayedMean)
    load_s: _DecayedMean = dataclasses.field(default_factory=_DecayedMean)
    run_s: _DecayedMean = dataclasses.field(default_factory=_DecayedMean)


class SpeedBook:
    """Per model: tokens/s, tokens per reply, prompt time, cold-load time and run time (total less load)."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelStats] = {}
        # How long any request holds the backend, its model load included: what one ahead in a queue costs.
        self._busy_s = _DecayedMean(half_life_s=BUSY_HALF_LIFE_S)
        # Counts the requests learnt from, so a reader can tell the figures have changed.
        self.learnt = 0

    def observe(self, model: str, seen: Observation, now: float) -> None:
        """Learn from one finished request for `model` (a model key)."""
        self.learnt += 1
        stats = self._models.setdefault(model, _ModelStats())
        load_s = seen.load_s or 0.0
        if seen.eval_count is not None and seen.eval_s and seen.eval_count > 1:
            stats.tokens_per_s.add(seen.eval_count / seen.eval_s, now)
        if seen.eval_count is not None:
            stats.tokens.add(seen.eval_count, now)
        if seen.prompt_s is not None:
            stats.prompt_s.add(seen.prompt_s, now)
        if load_s >= COLD_LOAD_MIN_S:
            stats.load_s.add(load_s, now)
        run_s = max(0.0, seen.total_s - load_s)
        stats.run_s.add(run_s, now)
        # The backend was busy with it for its compute and its cold load, not while it queued.
        busy_s = seen.total_s
        if seen.eval_s is not None and seen.prompt_s is not None:
            busy_s = seen.eval_s + seen.prompt_s + (load_s if load_s >= COLD_LOAD_MIN_S else 0.0)
        self._busy_s.add(busy_s, now)

    def snapshot(self, now: float) -> Speeds:
        """Return the learnt figures as they stand at `now`; those faded away are left out."""
        models = {}
        for model, stats in self._models.items():
            figures = ModelFigures(
                **{
                    field.name: _published(read)
                    for field in dataclasses.fields(stats)
                    if (read := getattr(stats, field.name).read(now)) is not None
                }
            )
            if figures != ModelFigures():
                models[model] = figures
        busy = self._busy_s.read(now)
        return Speeds(models, _published(busy) if busy else None)


def _published(read: tuple[float, float]) -> Figure:
    """Round a figure as a status publishes it: no more digits than a decision could tell apart."""
    return Figure(round(read[0], 4), round(read[1], 3))
