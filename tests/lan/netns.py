"""A simulated LAN for multi-host tests: network namespaces cabled to one bridge, on 198.18.0.0/24.

Every namespace is named `ihlan-<pid>-<n>-…` so that the leftovers of a run that was killed before it
could clean up can be found (`stale_prefixes`) and removed (`remove_leftovers`). Interfaces live inside
those namespaces and vanish with them; the ones we name ourselves also start with `ihlan-`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LEFTOVER_PREFIX = "ihlan-"
SUBNET = "198.18.0.0/24"
MDNS_GROUP = "224.0.0.251"
_FIRST_HOST_OCTET = 10
_MAX_HOSTS = 100
_BRIDGE = "ihlan-br0"
_HOST_IFACE = "eth0"
_MULTICAST_NET = "224.0.0.0/4"
_IP_TIMEOUT_S = 10.0
_TERM_GRACE_S = 3.0
_KILL_WAIT_S = 5.0
_POLL_S = 0.02
_RUN_PREFIX = re.compile(rf"^{LEFTOVER_PREFIX}(\d+)-")
# The kernel's ARP table is one for all namespaces, sized for one machine (gc_thresh3 = 1024 by default).
_NEIGHBOUR_LIMITS = Path("/proc/sys/net/ipv4/neigh/default")
_NEIGHBOUR_KNOBS = ("gc_thresh2", "gc_thresh3")

_lan_numbers = itertools.count()


class NetnsError(RuntimeError):
    """An `ip` command that builds or removes the simulated LAN failed."""


def _ip(args: list[str], stdin: str | None = None) -> str:
    """Run `ip` with `args` and return its output; raise NetnsError with its message if it fails."""
    result = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        why = result.stderr.strip() or f"exit status {result.returncode}"
        raise NetnsError(f"ip {' '.join(args)}: {why}")
    return result.stdout


def _ip_batch(namespace: str, commands: list[str]) -> None:
    """Run several `ip` commands inside `namespace` with one process, which keeps setup fast."""
    _ip(["-n", namespace, "-batch", "-"], stdin="\n".join(commands) + "\n")


def list_namespaces() -> list[str]:
    """Return the names of all named network namespaces."""
    output = _ip(["-j", "netns", "list"]).strip()
    # `ip -j netns list` prints nothing at all, not `[]`, on some iproute2 versions when there are none.
    return [entry["name"] for entry in json.loads(output)] if output else []


def _namespace_pids(namespace: str) -> list[int]:
    """Return the ids of the processes running inside `namespace`; none if it is already gone."""
    try:
        return [int(pid) for pid in _ip(["netns", "pids", namespace]).split()]
    except NetnsError:
        return []


def _signal_pids(pids: list[int], signum: signal.Signals) -> None:
    """Send `signum` to each of `pids` that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _delete_namespace(namespace: str) -> None:
    """Delete `namespace` with whatever is in it: its veth ends (and so their peers) and its bridge."""
    # Deleting only unnames a namespace: it lives on, cabled in, while a process still runs inside it.
    _signal_pids(_namespace_pids(namespace), signal.SIGKILL)
    _ip(["netns", "del", namespace])


def remove_leftovers(prefix: str = LEFTOVER_PREFIX) -> list[str]:
    """Delete every namespace whose name starts with `prefix`, killing what runs in it; return their names."""
    if not prefix.startswith(LEFTOVER_PREFIX):
        raise ValueError(f"refusing to remove namespaces whose prefix {prefix!r} lacks {LEFTOVER_PREFIX!r}")
    removed = [name for name in list_namespaces() if name.startswith(prefix)]
    for name in removed:
        _delete_namespace(name)
    return removed


def _process_exists(pid: int) -> bool:
    """Tell whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_prefixes() -> list[str]:
    """Return the prefixes of namespaces left behind by processes that no longer exist."""
    prefixes = set()
    for name in list_namespaces():
        if (found := _RUN_PREFIX.match(name)) and not _process_exists(int(found.group(1))):
            prefixes.add(found.group(0))
    return sorted(prefixes)


@functools.cache
def netns_unavailable() -> str | None:
    """Return why network namespaces cannot be used here (not root, no `ip`, creation refused), or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root: run the LAN tests as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{LEFTOVER_PREFIX}{os.getpid()}-probe"
    try:
        _ip(["netns", "add", probe])
    except (NetnsError, OSError, subprocess.SubprocessError) as error:
        return f"cannot create a network namespace: {error}"
    try:
        _ip_batch(probe, [f"link add {_BRIDGE} type bridge", "link add ihlan-p0 type veth peer name eth0"])
    except NetnsError as error:
        return f"cannot create a bridge and a veth pair in a network namespace: {error}"
    finally:
        with contextlib.suppress(NetnsError):
            _delete_namespace(probe)
    return None


def _running(procs: list[subprocess.Popen[Any]], namespaces: list[str]) -> list[int]:
    """Return the ids of the processes still running, started by us or found inside `namespaces`."""
    started = [proc.pid for proc in procs if proc.poll() is None]
    return sorted({*started, *(pid for name in namespaces for pid in _namespace_pids(name))})


def _stop_processes(procs: list[subprocess.Popen[Any]], namespaces: list[str], grace_s: float) -> None:
    """SIGTERM every process we started or that runs in `namespaces`, SIGKILL what is left after `grace_s`.

    Everything inside our namespaces is ours, children that left their process group included. Our own
    children are then reaped and their pipes closed, so no ResourceWarning follows.
    """
    _signal_pids(_running(procs, namespaces), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := _running(procs, namespaces)) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    _signal_pids(left, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=_KILL_WAIT_S)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class _NeighbourRoom:
    """Room in the kernel's one ARP table for every host of the LANs open in this process.

    Each host keeps an entry for every peer it talks to and one for the mDNS group, so 40 hosts that all
    talk to each other need 1,640 entries. Past gc_thresh3 the kernel refuses new ones ("neighbor table
    overflow"), and the last hosts to start can send nothing, multicast included, while a real machine
    with its own table would. The limits are raised while such LANs are open, and put back after.
    """

    def __init__(self) -> None:
        self._hosts = 0
        self._saved: dict[str, str] = {}

    def _write(self, limits: dict[str, str]) -> None:
        for name, value in limits.items():
            (_NEIGHBOUR_LIMITS / name).write_text(value)

    def add(self, hosts: int) -> None:
        """Make room for `hosts` more hosts."""
        self._hosts += hosts
        needed = self._hosts * (self._hosts + 1)
        current = {name: (_NEIGHBOUR_LIMITS / name).read_text().strip() for name in _NEIGHBOUR_KNOBS}
        if needed <= int(current["gc_thresh2"]):
            return
        self._saved = self._saved or current
        self._write({"gc_thresh2": str(needed), "gc_thresh3": str(2 * needed)})

    def remove(self, hosts: int) -> None:
        """Give back the room of `hosts` hosts, and the kernel's own limits once no LAN is left."""
        self._hosts -= hosts
        if self._hosts == 0 and self._saved:
            self._write(self._saved)
            self._saved = {}


_neighbour_room = _NeighbourRoom()


class Host:
    """One machine on the LAN: a namespace whose eth0 is cabled to a port of the switch."""

    def __init__(
        self, name: str, ip: str, switch: str, port: str, procs: list[subprocess.Popen[Any]]
    ) -> None:
        self.name = name
        self.ip = ip
        self.switch_port = port
        self._switch = switch
        self._procs = procs

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.ip!r})"

    def _command(self, args: list[str]) -> list[str]:
        """Return the command line that runs `args` inside this host."""
        return ["ip", "netns", "exec", self.name, *args]

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `args` inside this host; the LAN stops it, and whatever it started, at exit."""
        # `ip netns exec` execs `args` in place, so the Popen's pid is the program's own. A session of its
        # own keeps a Ctrl-C at the terminal from reaching it before the LAN's orderly shutdown.
        proc = subprocess.Popen(self._command(args), start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, args: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `args` inside this host and wait for it, killing it after `timeout` seconds."""
        return subprocess.run(self._command(args), timeout=timeout, **kwargs)

    def link_down(self) -> None:
        """Unplug this host's cable: its eth0 stays configured and up but loses carrier."""
        # Downing the switch's end, not eth0 itself, is what makes the host see NO-CARRIER, as when unplugged.
        _ip(["-n", self._switch, "link", "set", self.switch_port, "down"])

    def link_up(self) -> None:
        """Plug this host's cable back in."""
        _ip(["-n", self._switch, "link", "set", self.switch_port, "up"])


class Lan:
    """Hosts on one switch, as a context manager: `with Lan(3) as lan: a, b, c = lan.hosts`."""

    def __init__(self, count: int, *, term_grace_s: float = _TERM_GRACE_S) -> None:
        if not 1 <= count <= _MAX_HOSTS:
            raise ValueError(f"a LAN has 1 to {_MAX_HOSTS} hosts, not {count}")
        self.prefix = f"{LEFTOVER_PREFIX}{os.getpid()}-{next(_lan_numbers)}-"
        self.switch = f"{self.prefix}sw"
        self._term_grace_s = term_grace_s
        self._procs: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._roomed = False
        self.hosts = [
            Host(f"{self.prefix}h{i}", _host_address(i), self.switch, f"ihlan-p{i}", self._procs)
            for i in range(count)
        ]

    def block_multicast(self) -> None:
        """Stop the switch forwarding multicast, as networks that filter mDNS do; unicast still flows."""
        _ip_batch(
            self.switch,
            [f"link set {host.switch_port} type bridge_slave mcast_flood off" for host in self.hosts],
        )

    @property
    def namespaces(self) -> list[str]:
        """Return the names of every namespace this LAN uses, the switch's first."""
        return [self.switch, *(host.name for host in self.hosts)]

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._teardown()

    def _add_namespace(self, name: str) -> None:
        """Create a namespace and remember to delete it."""
        _ip(["netns", "add", name])
        self._created.append(name)

    def _build(self) -> None:
        """Create the switch, then cable in each host."""
        _neighbour_room.add(len(self.hosts))
        self._roomed = True
        self._add_namespace(self.switch)
        # Without snooping the bridge floods multicast, so mDNS works with no IGMP querier on the LAN.
        _ip_batch(
            self.switch,
            ["link set lo up", f"link add {_BRIDGE} type bridge mcast_snooping 0", f"link set {_BRIDGE} up"],
        )
        for host in self.hosts:
            self._add_host(host)

    def _add_host(self, host: Host) -> None:
        """Create a host namespace, cable its eth0 to a bridge port, and give it its address."""
        self._add_namespace(host.name)
        _ip_batch(
            self.switch,
            [
                f"link add {host.switch_port} type veth peer name {_HOST_IFACE} netns {host.name}",
                f"link set {host.switch_port} master {_BRIDGE} up",
            ],
        )
        _ip_batch(
            host.name,
            [
                "link set lo up",
                f"addr add {host.ip}/24 dev {_HOST_IFACE}",
                f"link set {_HOST_IFACE} up",
                # A namespace has no default route; multicast needs one to leave by eth0.
                f"route add {_MULTICAST_NET} dev {_HOST_IFACE}",
            ],
        )
        _check_multicast_route(host.name)

    def _teardown(self) -> None:
        """Stop every process started on the hosts, then delete every namespace created."""
        errors = []
        try:
            _stop_processes(self._procs, self._created, self._term_grace_s)
        finally:
            for name in reversed(self._created):
                try:
                    _delete_namespace(name)
                except NetnsError as error:
                    errors.append(str(error))
            self._created.clear()
            if self._roomed:
                _neighbour_room.remove(len(self.hosts))
                self._roomed = False
        if errors:
            raise NetnsError("; ".join(errors))


def _host_address(index: int) -> str:
    """Return the address of the host numbered `index`, inside the benchmark range 198.18.0.0/24."""
    return f"198.18.0.{_FIRST_HOST_OCTET + index}"


def _check_multicast_route(namespace: str) -> None:
    """Raise NetnsError unless mDNS traffic from `namespace` leaves by its eth0."""
    routes = json.loads(_ip(["-n", namespace, "-j", "route", "get", MDNS_GROUP]))
    if not routes or routes[0].get("dev") != _HOST_IFACE:
        raise NetnsError(f"{MDNS_GROUP} is not routed through {_HOST_IFACE} in {namespace}: {routes}")


if __name__ == "__main__":
    print("\n".join(remove_leftovers(sys.argv[1] if len(sys.argv) > 1 else LEFTOVER_PREFIX)))
