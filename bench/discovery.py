"""Print how fast nodes on a LAN find each other and drop the ones that leave, and what mDNS costs.

    python -m bench.discovery [--nodes 2,4,8,16] [--window 30] [--keep DIR]

Each pool size runs on a fresh simulated LAN (tests/lan/netns.py, so root is needed): per host a fake
Ollama and a sharing node; on the switch a counter of mDNS datagrams and status polls by sender. Times
come from the nodes' logs, which say to the millisecond when each peer enters or leaves the list a node's
API serves: clients polling 64 nodes' peer lists often enough to time them would use more of this
machine's two cores than the nodes do, and slow the very join they time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil

from tests.lan.netns import Host, Lan, netns_unavailable, remove_leftovers, stale_prefixes
from tests.support import ROOT

T = TypeVar("T")

COUNTER = ROOT / "bench" / "scripts" / "count_packets.py"
# The switch's bridge, as tests/lan/netns.py names it.
BRIDGE = "ihlan-br0"
LOCAL_API = "http://127.0.0.1:11435"
_UP_TIMEOUT_S = 90.0
_JOIN_TIMEOUT_S = 60.0
_EVICT_TIMEOUT_S = 20.0
_COUNTER_READY_S = 10.0
_CHECK_S = 0.05
# zeroconf's browser queries 0, 1, 5 and 14 s after it starts, then only to refresh records about to
# expire: the steady-state window begins this long after the last node answered.
_SETTLE_S = 16.0
# By then a started node has probed its name and sent its announcements.
_REGISTERED_S = 4.0
_NODE_EXIT_S = 10.0
_LOG_EXCERPT_LINES = 3
_NOTEWORTHY = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
# Written to a node's log as the node is started; the log's own timestamps look the same.
_STARTED = "bench: node started"
_LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"
# What a node logs as it starts serving, and as a peer enters or leaves its table (membership.py).
_LOGGED = re.compile(
    rf"(?P<at>\S+ \S+) (?:(?P<started>{_STARTED})|INFO inferhub_desktop\.core\."
    r"(?:node: node '.*' (?P<served>serving) the Ollama API"
    r"|membership: peer '(?:(?P<joined>[^']+)' joined from |(?P<left>[^']+)' (?:\(|was removed))))"
)


def wait_for(probe: Callable[[], T | None], timeout: float) -> T | None:
    """Poll `probe` until it returns something other than None; give up with None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (found := probe()) is None and time.monotonic() < deadline:
        time.sleep(_CHECK_S)
    return found


@dataclass
class Member:
    """One host of the pool: its node, and the log its node writes."""

    index: int
    host: Host
    work: Path
    node: subprocess.Popen[Any]
    served: float | None = None  # when the node last began serving its local API
    _read: int = 0
    _views: list[tuple[float, frozenset[str]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def node_log(self) -> Path:
        return self.work / "node.log"

    def views(self) -> list[tuple[float, frozenset[str]]]:
        """Return each peer list the node has held, as (time, names), oldest first, read from its log.

        The node logs a peer as it enters or leaves the table its API lists, so the log tells when each
        list began, to the millisecond, with no client polling 64 nodes for it.
        """
        with self.node_log.open("rb") as log:
            log.seek(self._read)
            lines = log.read().decode(errors="replace").split("\n")
        self._read += sum(len(line.encode()) + 1 for line in lines[:-1])
        for line in lines[:-1]:
            if not (found := _LOGGED.match(line)):
                continue
            at = datetime.strptime(found["at"], _LOG_TIME).timestamp()
            names = self._views[-1][1] if self._views else frozenset()
            if found["started"]:  # a start, or a restart: no peers yet
                names, self.served = frozenset(), None
            elif found["served"]:
                self.served = at
            elif found["joined"]:
                names = names | {found["joined"]}
            else:
                names = names - {found["left"]}
            self._views.append((at, names))
        return self._views


def start_node(host: Host, index: int, work: Path) -> subprocess.Popen[Any]:
    """Start a sharing node on `host`, its output going to work/node.log (appended to on a restart)."""
    args = [sys.executable, "-m", "inferhub_desktop", "serve", "--headless", "--share", "--name"]
    args += [f"node{index}", "--config-dir", str(work / "config"), "--interface", host.ip]
    args += ["--backend", "http://127.0.0.1:11434"]
    with (work / "node.log").open("a") as out:
        out.write(f"{datetime.now().strftime(_LOG_TIME)[:-3]} {_STARTED}\n")
        out.flush()
        return host.popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def start_fake(host: Host, index: int, work: Path) -> Path:
    """Start a fake Ollama on `host`; return the file it reports to."""
    work.mkdir(parents=True)
    args = [sys.executable, "-m", "tests.fakes.ollama", "--host", "127.0.0.1", "--port", "11434"]
    with (work / "fake.log").open("w") as out:
        host.popen([*args, "--model", f"model{index}:latest"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return work / "fake.log"


def start_member(host: Host, index: int, work: Path) -> Member:
    """Start a node on `host`, whose fake Ollama is listening."""
    return Member(index, host, work, start_node(host, index, work))


def first_time(
    members: list[Member], holds: Callable[[Member, frozenset[str]], bool], since: float
) -> tuple[float | None, dict[str, float | None]]:
    """Return when `holds` first held for every member at once, and for each member, from `since` on.

    A member whose last view before `since` already satisfied `holds` counts as doing so at `since`.
    """
    by_index = {m.index: m for m in members}
    state: dict[int, bool] = {}
    each: dict[int, float] = {}
    together = None

    def settle(at: float) -> None:
        nonlocal together
        for index, holding in state.items():
            if holding:
                each.setdefault(index, at)
        if together is None and len(state) == len(members) and all(state.values()):
            together = at

    settled = False
    for t, index, names in sorted((t, m.index, names) for m in members for t, names in m.views()):
        if t >= since and not settled:
            settle(since)
            settled = True
        state[index] = holds(by_index[index], names)
        if t >= since:
            settle(t)
    if not settled:
        settle(since)
    return together, {m.name: each.get(m.index) for m in members}


@dataclass
class Snapshot:
    """The counter's running totals at one moment."""

    t: float
    mdns: dict[str, list[int]]
    polls: dict[str, int]


class Counter:
    """The packet counter on the switch, as a context manager that always stops it."""

    def __init__(self, switch: str, log: Path) -> None:
        self._switch = switch
        self._log = log
        self._proc: subprocess.Popen[Any] | None = None

    def __enter__(self) -> Counter:
        with self._log.open("w") as out:
            # Its own session, like Host.popen: a Ctrl-C reaches only us, and we stop it in order.
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self._switch, sys.executable, str(COUNTER), BRIDGE],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait_for(self._latest, _COUNTER_READY_S) is None:
            self.__exit__()
            raise RuntimeError(f"the packet counter did not start:\n{self._log.read_text()}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def _latest(self) -> Snapshot | None:
        lines = [line for line in self._log.read_text().splitlines() if line.endswith("}")]
        return Snapshot(**json.loads(lines[-1])) if lines else None

    def snapshot(self) -> Snapshot:
        """Return the totals as of now, waiting for the counter's next line."""
        asked = time.time()
        found = wait_for(lambda: s if (s := self._latest()) and s.t >= asked else None, _COUNTER_READY_S)
        if found is None:
            raise RuntimeError(f"the packet counter stopped:\n{self._log.read_text()[-2000:]}")
        return found


def sent(before: Snapshot, after: Snapshot, ips: list[str]) -> tuple[list[int], list[int], list[int]]:
    """Return, per address, the mDNS packets, mDNS bytes and status polls sent between two snapshots."""

    def diff(ip: str, i: int) -> int:
        return after.mdns.get(ip, [0, 0])[i] - before.mdns.get(ip, [0, 0])[i]

    polls = [after.polls.get(ip, 0) - before.polls.get(ip, 0) for ip in ips]
    return [diff(ip, 0) for ip in ips], [diff(ip, 1) for ip in ips], polls


def busy_percent(before: Any, after: Any) -> float:
    """Return how busy all CPUs were between two psutil.cpu_times() readings, in percent."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0)) - (before.idle + getattr(before, "iowait", 0))
    return 100 * (total - idle) / total if total > 0 else 0.0


@dataclass
class Row:
    """What one pool size measured; None where it did not happen within its time limit."""

    nodes: int
    up_s: float | None = None
    join_s: float | None = None
    node_join_s: list[float] = field(default_factory=list)
    join_mdns: list[int] = field(default_factory=list)
    settle_mdns: list[int] = field(default_factory=list)
    steady_mdns_per_min: list[float] = field(default_factory=list)
    steady_kb_per_min: float | None = None
    polls_per_s: list[float] = field(default_factory=list)
    node_cpu: list[float] = field(default_factory=list)
    cpu_join: float | None = None
    crash_s: float | None = None
    goodbye_s: float | None = None
    notes: list[str] = field(default_factory=list)


def eviction(leaver: Member, observers: list[Member], how: signal.Signals) -> float | None:
    """Send `how` to the leaver's node; return the time until every observer no longer lists it."""
    leaver.node.send_signal(how)
    stopped = time.time()

    def dropped() -> float | None:
        together, _ = first_time(observers, lambda m, names: leaver.name not in names, stopped)
        return together

    gone = wait_for(dropped, _EVICT_TIMEOUT_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leaver.node.wait(timeout=_NODE_EXIT_S)
    return None if gone is None else gone - stopped


def full_view(members: list[Member]) -> Callable[[Member, frozenset[str]], bool]:
    """Return the test that a member lists every other member and nobody else."""
    every = {m.name for m in members}
    return lambda member, names: names == every - {member.name}


def start_pool(lan: Lan, work: Path, row: Row) -> tuple[list[Member], float | None]:
    """Start the fakes, then the nodes; return the members and when the last one served."""
    fake_logs = [start_fake(host, i, work / f"node{i}") for i, host in enumerate(lan.hosts)]

    def listening() -> bool | None:
        return all("LISTENING" in log.read_text() for log in fake_logs) or None

    if wait_for(listening, _UP_TIMEOUT_S) is None:
        row.notes.append(f"the fake Ollamas did not all listen within {_UP_TIMEOUT_S:.0f} s")
        return [], None
    started = time.time()
    members = [start_member(host, i, work / f"node{i}") for i, host in enumerate(lan.hosts)]

    def first_views() -> list[float] | None:
        for member in members:
            member.views()
        served = [m.served for m in members if m.served is not None]
        return served if len(served) == len(members) else None

    answered = wait_for(first_views, _UP_TIMEOUT_S)
    if answered is None:
        row.notes.append(f"not every node served its local API within {_UP_TIMEOUT_S:.0f} s")
        return members, None
    row.up_s = max(answered) - started
    return members, max(answered)


def measure_join(members: list[Member], up: float, counter: Counter, before: Snapshot, row: Row) -> bool:
    """Wait until every node lists all the others; fill in the join figures and tell whether it happened."""
    full = full_view(members)
    joined = wait_for(lambda: first_time(members, full, up)[0], _JOIN_TIMEOUT_S)
    after = counter.snapshot()
    _, each = first_time(members, full, up)
    row.node_join_s = [t - up for t in each.values() if t is not None]
    row.join_mdns = sent(before, after, [m.host.ip for m in members])[0]
    if joined is None:
        late = sorted(name for name, t in each.items() if t is None)
        row.notes.append(f"no full join within {_JOIN_TIMEOUT_S:.0f} s; incomplete: {', '.join(late)}")
        return False
    row.join_s = joined - up
    return True


def measure_steady(members: list[Member], up: float, counter: Counter, window: float, row: Row) -> None:
    """Let the browsers' start-up queries end, then count traffic and node CPU over `window` seconds."""
    ips = [m.host.ip for m in members]
    joined = counter.snapshot()
    time.sleep(max(0.0, up + _SETTLE_S - time.time()))
    start = counter.snapshot()
    row.settle_mdns = sent(joined, start, ips)[0]
    nodes = [psutil.Process(m.node.pid) for m in members]
    cpu_before = [sum(p.cpu_times()[:2]) for p in nodes]
    time.sleep(window)
    end = counter.snapshot()
    cpu_after = [sum(p.cpu_times()[:2]) for p in nodes]
    seconds = end.t - start.t
    packets, sizes, polls = sent(start, end, ips)
    row.steady_mdns_per_min = [p * 60 / seconds for p in packets]
    row.steady_kb_per_min = sum(sizes) * 60 / seconds / 1000
    row.polls_per_s = [p / seconds for p in polls]
    row.node_cpu = [100 * (b - a) / seconds for a, b in zip(cpu_before, cpu_after, strict=True)]


def measure_leaving(members: list[Member], row: Row) -> None:
    """Crash one node, then stop another gracefully; time how long the rest take to drop each."""
    crashed, rest = members[-1], members[:-1]
    row.crash_s = eviction(crashed, rest, signal.SIGKILL)
    if len(rest) < 2:  # nobody would be left to watch a goodbye: bring the crashed node back first
        crashed.node = start_node(crashed.host, crashed.index, crashed.work)
        back = time.time()
        rejoined = wait_for(lambda: first_time(members, full_view(members), back)[0], _JOIN_TIMEOUT_S)
        took = f"{rejoined - back:.2f} s" if rejoined else f"over {_JOIN_TIMEOUT_S:.0f} s"
        row.notes.append(f"goodbye timed on {crashed.name} restarted after its crash (rejoined in {took})")
        # Stopping closes mDNS only once registration is over, which would hold back the goodbye.
        time.sleep(max(0.0, back + _REGISTERED_S - time.time()))
        leaver, observers = crashed, rest
    else:
        leaver, observers = rest[-1], rest[:-1]
    row.goodbye_s = eviction(leaver, observers, signal.SIGTERM)
    by_goodbye = sum(f"'{leaver.name}' (" in _said_goodbye(o) for o in observers)
    if by_goodbye < len(observers):
        row.notes.append(f"only {by_goodbye} of {len(observers)} observers logged {leaver.name}'s goodbye")


def measure(lan: Lan, counter: Counter, work: Path, window: float, row: Row) -> list[Member]:
    """Start the pool on `lan` and fill `row` in; return the members so their logs can be read."""
    cpu_start, before = psutil.cpu_times(), counter.snapshot()
    members, up = start_pool(lan, work, row)
    if up is None:
        return members
    joined = measure_join(members, up, counter, before, row)
    row.cpu_join = busy_percent(cpu_start, psutil.cpu_times())
    if joined:
        measure_steady(members, up, counter, window, row)
        measure_leaving(members, row)
    return members


def _said_goodbye(member: Member) -> str:
    """Return the lines of a node's log that record a peer's goodbye."""
    return "".join(line for line in member.node_log.read_text().splitlines() if "said goodbye" in line)


def log_notes(members: list[Member]) -> list[str]:
    """Return a count and the first lines of warnings, errors and tracebacks in the nodes' logs."""
    found = [
        f"{m.name}: {line}"
        for m in members
        for line in m.node_log.read_text().splitlines()
        if _NOTEWORTHY.search(line)
    ]
    if not found:
        return []
    return [f"{len(found)} warning/error lines in node logs, e.g.:", *found[:_LOG_EXCERPT_LINES]]


def stop_nodes(members: list[Member]) -> None:
    """Stop the nodes still running, all at once as at a LAN-wide shutdown, before their backends go."""
    running = [m.node for m in members if m.node.poll() is None]
    for node in running:
        node.send_signal(signal.SIGTERM)
    for node in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=_NODE_EXIT_S)


def run_pool(count: int, window: float, work: Path) -> Row:
    """Measure a pool of `count` nodes on a fresh LAN."""
    row = Row(count)
    work.mkdir(parents=True)
    with Lan(count) as lan, Counter(lan.switch, work / "counter.log") as counter:
        members = measure(lan, counter, work, window, row)
        stop_nodes(members)
    row.notes += log_notes(members)
    return row


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(values: list[float], middle: Callable[[list[float]], float], digits: int) -> str:
    if not values:
        return "-"
    return f"{_fmt(middle(values), digits)}/{_fmt(max(values), digits)}"


_COLUMNS = [
    ("N", 3),
    ("up s", 6),
    ("join s", 7),
    ("node p50/max", 13),
    ("mDNS join", 10),
    ("settle", 8),
    ("steady/min", 11),
    ("kB/min", 7),
    ("polls/s", 8),
    ("node CPU%", 10),
    ("busy%", 6),
    ("crash s", 8),
    ("goodbye s", 10),
]


def print_header(window: float) -> None:
    """Print what the columns mean, then their titles."""
    print(
        f"""up: nodes started until the last one serves locally; join: from then until every node lists all
  the others (node p50/max: each node's own time);
mDNS datagrams sent by each node, mean/max: join: from start to the join; settle: from the join until
  {_SETTLE_S:.0f} s after 'up', when the browsers' start-up queries are over; steady/min: per minute over
  the next {window:.0f} s, where kB/min is all mDNS on the wire, polls/s the status requests each node
  sends, node CPU% each node's use of one core (mean/max); busy%: both cores, start to join;
crash, goodbye: until every other node drops a SIGKILLed, then a SIGTERMed node
"""
    )
    print("".join(f"{title:>{width}}" for title, width in _COLUMNS))


def print_row(row: Row) -> None:
    """Print one pool size's figures, then any notes about it."""
    cells = [
        str(row.nodes),
        _fmt(row.up_s),
        _fmt(row.join_s),
        _pair(row.node_join_s, statistics.median, 2),
        _pair([float(p) for p in row.join_mdns], statistics.fmean, 0),
        _pair([float(p) for p in row.settle_mdns], statistics.fmean, 0),
        _pair(row.steady_mdns_per_min, statistics.fmean, 1),
        _fmt(row.steady_kb_per_min, 1),
        _fmt(statistics.fmean(row.polls_per_s) if row.polls_per_s else None, 1),
        _pair(row.node_cpu, statistics.fmean, 1),
        _fmt(row.cpu_join, 0),
        _fmt(row.crash_s),
        _fmt(row.goodbye_s),
    ]
    print("".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)), flush=True)
    for note in row.notes:
        print(f"      {note}", flush=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so every LAN and process is cleaned up on the way out."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def work_dir(keep: Path | None) -> Iterator[Path]:
    """Yield the directory for logs: `keep` if given (left in place), else a temporary one."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="2,4,8,16", help="comma-separated pool sizes (default 2,4,8,16)")
    parser.add_argument("--window", type=float, default=30.0, help="steady-state seconds (default 30)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep every process's log under DIR")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",")]
    if any(n < 2 for n in sizes):
        parser.error("a pool needs at least 2 nodes")
    if why := netns_unavailable():
        print(f"skipped: {why}")
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for prefix in stale_prefixes():  # namespaces a killed run left behind
        remove_leftovers(prefix)
    begun = time.monotonic()
    with work_dir(args.keep) as work:
        print_header(args.window)
        for count in sizes:
            print_row(run_pool(count, args.window, work / f"n{count}-{time.strftime('%H%M%S')}"))
    print(f"\ntotal {time.monotonic() - begun:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every process and namespace was removed", file=sys.stderr)
        sys.exit(130)
