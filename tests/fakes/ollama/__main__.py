"""Run the fake Ollama as its own process: python -m tests.fakes.ollama --help."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tests.fakes import serve_until_stopped

from .models import FakeModel
from .server import FakeOllama


def _model_spec(spec: str) -> FakeModel:
    """Parse `NAME[@BYTES][=capability,capability]`."""
    named, _, capabilities = spec.partition("=")
    name, _, size = named.partition("@")
    model = FakeModel(name, capabilities=tuple(capabilities.split(","))) if capabilities else FakeModel(name)
    return replace(model, size=int(size)) if size else model


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.ollama", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--model", action="append", type=_model_spec, help="NAME[@BYTES][=cap,cap]; repeatable"
    )
    parser.add_argument(
        "--models-dir", type=Path, help="keep models as files in Ollama's layout here (weights: BYTES each)"
    )
    parser.add_argument("--registry", action="append", type=_model_spec, default=[], help="pullable model")
    parser.add_argument("--loaded", action="append", default=[], help="model loaded at start; repeatable")
    parser.add_argument("--tps", type=float, default=500.0, help="tokens per second (0: as fast as it can)")
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds to load a model")
    parser.add_argument(
        "--parallel", type=int, help="requests each loaded model runs at once (OLLAMA_NUM_PARALLEL)"
    )
    parser.add_argument("--max-loaded", type=int, help="models loaded at once (OLLAMA_MAX_LOADED_MODELS)")
    parser.add_argument(
        "--max-queue", type=int, default=512, help="requests that may queue for a load (OLLAMA_MAX_QUEUE)"
    )
    parser.add_argument("--num-predict", type=int, default=8, help="tokens when num_predict is unset")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--version", default="0.12.10")
    return parser.parse_args(argv)


def _fake(args: argparse.Namespace) -> FakeOllama:
    """Build the fake the command line describes."""
    return FakeOllama(
        args.model or ("llama3:latest",),
        loaded=args.loaded,
        registry=args.registry,
        tokens_per_second=args.tps,
        load_delay_s=args.load_delay,
        num_parallel=args.parallel,
        max_loaded_models=args.max_loaded,
        max_queue=args.max_queue,
        version=args.version,
        default_num_predict=args.num_predict,
        embedding_dim=args.embedding_dim,
        host=args.host,
        port=args.port,
        models_dir=args.models_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake as a process."""
    return asyncio.run(serve_until_stopped(_fake(_parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
