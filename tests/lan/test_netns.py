"""Hosts in network namespaces on one bridge: TCP and real mDNS cross it, cables unplug, nothing is left."""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lan.netns import (
    MDNS_GROUP,
    Host,
    Lan,
    list_namespaces,
    netns_unavailable,
    remove_leftovers,
    stale_prefixes,
)

_UNAVAILABLE = netns_unavailable()
pytestmark = pytest.mark.skipif(
    _UNAVAILABLE is not None, reason=f"network namespaces are unavailable: {_UNAVAILABLE}"
)

SCRIPTS = Path(__file__).resolve().parent / "scripts"
_READY_TIMEOUT_S = 10.0
_RUN_TIMEOUT_S = 15.0
_BROWSE_TIMEOUT_S = 5.0
_UNREACHABLE_TIMEOUT_S = 1.0
_RECONNECT_WITHIN_S = 5.0
_GONE_WITHIN_S = 2.0
_STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)
_ESCAPES_ITS_GROUP = (
    "import subprocess, time; p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
    "print(p.pid, flush=True); time.sleep(60)"
)
_SLEEPER = ["sleep", "60"]


def _start(host: Host, args: list[str]) -> subprocess.Popen[str]:
    """Start a Python program on `host` with its output on a pipe."""
    return host.popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)


def _first_line(proc: subprocess.Popen[str]) -> str:
    """Return the first line `proc` prints, failing the test if none comes in time."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], _READY_TIMEOUT_S)
    if not readable:
        pytest.fail(f"{proc.args} printed nothing in {_READY_TIMEOUT_S} s")
    return proc.stdout.readline().strip()


def _serve(host: Host, message: str) -> int:
    """Run the TCP server on `host`'s LAN address; return its port."""
    line = _first_line(_start(host, [str(SCRIPTS / "tcp_serve.py"), host.ip, message]))
    assert line.startswith("ready "), line
    return int(line.split()[1])


def _fetch(host: Host, address: str, port: int, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Connect from `host` to `address:port` and return what the client printed."""
    args = [sys.executable, str(SCRIPTS / "tcp_fetch.py"), address, str(port), str(timeout_s)]
    return host.run(args, timeout=_RUN_TIMEOUT_S, capture_output=True, text=True, check=False)


def _ip_json(host: Host, *args: str) -> Any:
    """Run `ip -j ARGS` inside `host` and return its parsed output."""
    result = host.run(["ip", "-j", *args], timeout=_RUN_TIMEOUT_S, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _eth0_flags(host: Host) -> list[str]:
    """Return the link flags of `host`'s eth0, such as NO-CARRIER or LOWER_UP."""
    flags: list[str] = _ip_json(host, "link", "show", "eth0")[0]["flags"]
    return flags


def _is_gone(pid: int) -> bool:
    """Tell whether a process has exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _wait_gone(pid: int) -> bool:
    """Wait a little for a process that is not our child to exit; tell whether it did."""
    deadline = time.monotonic() + _GONE_WITHIN_S
    while not _is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_hosts_get_addresses_loopback_and_a_multicast_route() -> None:
    with Lan(3) as lan:
        assert [host.ip for host in lan.hosts] == ["198.18.0.10", "198.18.0.11", "198.18.0.12"]
        assert all(name.startswith(lan.prefix) and name.startswith("ihlan-") for name in lan.namespaces)
        for host in lan.hosts:
            links = {link["ifname"]: link for link in _ip_json(host, "addr", "show")}
            assert set(links) == {"lo", "eth0"}
            assert "UP" in links["lo"]["flags"]
            assert "LOWER_UP" in links["eth0"]["flags"]
            addresses = [
                (a["local"], a["prefixlen"]) for a in links["eth0"]["addr_info"] if a["family"] == "inet"
            ]
            assert addresses == [(host.ip, 24)]
            assert _ip_json(host, "route", "get", MDNS_GROUP)[0]["dev"] == "eth0"
        bridge = subprocess.run(
            ["ip", "-n", lan.switch, "-j", "-d", "link", "show", "type", "bridge"],
            capture_output=True,
            text=True,
            timeout=_RUN_TIMEOUT_S,
            check=True,
        )
        [info] = json.loads(bridge.stdout)
        assert info["linkinfo"]["info_data"]["mcast_snooping"] == 0
        assert "UP" in info["flags"]


def test_each_lan_has_its_own_prefix() -> None:
    assert Lan(1).prefix != Lan(1).prefix


def test_tcp_crosses_the_bridge() -> None:
    token = secrets.token_hex(4)
    with Lan(2) as lan:
        a, b = lan.hosts
        port = _serve(a, token)
        result = _fetch(b, a.ip, port, _RECONNECT_WITHIN_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{token} to {b.ip}\n"


def test_a_big_lan_has_room_in_the_kernels_arp_table_and_gives_it_back() -> None:
    limit = Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
    before = int(limit.read_text())
    hosts = 40  # 40 hosts that all talk to each other and to the mDNS group: 1,640 entries
    with Lan(hosts):
        assert int(limit.read_text()) >= hosts * (hosts + 1)
    assert int(limit.read_text()) == before


def test_mdns_announcement_reaches_the_other_host() -> None:
    token = secrets.token_hex(4)
    with Lan(2) as lan:
        a, b = lan.hosts
        announcer = _start(a, [str(SCRIPTS / "mdns_announce.py"), a.ip, "host-a", token])
        assert _first_line(announcer) == "registered"
        browse = [sys.executable, str(SCRIPTS / "mdns_browse.py"), b.ip, str(_BROWSE_TIMEOUT_S)]
        result = b.run(browse, timeout=_RUN_TIMEOUT_S, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["name"] == "host-a._ihtest._tcp.local."
    assert seen["addresses"] == [a.ip]
    assert seen["properties"] == {"token": token}


def test_unplugged_host_is_unreachable_until_plugged_back() -> None:
    with Lan(2) as lan:
        a, b = lan.hosts
        port = _serve(a, "hello")
        assert _fetch(b, a.ip, port, _RECONNECT_WITHIN_S).returncode == 0

        a.link_down()
        assert "NO-CARRIER" in _eth0_flags(a)
        assert "UP" in _eth0_flags(a), "unplugging leaves the host's interface administratively up"
        unplugged = _fetch(b, a.ip, port, _UNREACHABLE_TIMEOUT_S)
        assert unplugged.returncode == 1, unplugged.stdout
        assert "unreachable" in unplugged.stderr

        a.link_up()
        deadline = time.monotonic() + _RECONNECT_WITHIN_S
        while (replugged := _fetch(b, a.ip, port, _UNREACHABLE_TIMEOUT_S)).returncode != 0:
            assert time.monotonic() < deadline, replugged.stderr
        assert replugged.stdout == f"hello to {b.ip}\n"
        assert "LOWER_UP" in _eth0_flags(a)


def test_exit_stops_every_process_and_deletes_every_namespace() -> None:
    with Lan(2, term_grace_s=0.5) as lan:
        a, b = lan.hosts
        assert set(lan.namespaces) <= set(list_namespaces())
        polite = a.popen(_SLEEPER)
        stubborn = _start(b, ["-c", _STUBBORN])
        assert _first_line(stubborn) == "ready"
        escaper = _start(b, ["-c", _ESCAPES_ITS_GROUP])
        escaped_pid = int(_first_line(escaper))
    assert not set(lan.namespaces) & set(list_namespaces())
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert escaper.returncode == -signal.SIGTERM
    assert _wait_gone(escaped_pid), "a process that left its group was still running in the LAN"


def _raise_inside(lans: list[Lan], procs: list[subprocess.Popen[Any]]) -> None:
    """Build a LAN, start a process on it, and fail inside the with-block."""
    with Lan(2) as lan:
        lans.append(lan)
        procs.append(lan.hosts[1].popen(_SLEEPER))
        raise RuntimeError("failed inside the LAN")


def test_exit_cleans_up_when_the_block_raises() -> None:
    lans: list[Lan] = []
    procs: list[subprocess.Popen[Any]] = []
    with pytest.raises(RuntimeError, match="failed inside the LAN"):
        _raise_inside(lans, procs)
    [lan] = lans
    assert not set(lan.namespaces) & set(list_namespaces())
    assert procs[0].returncode == -signal.SIGTERM


def test_remove_leftovers_cleans_up_after_a_killed_run() -> None:
    lan = Lan(2)
    lan.__enter__()  # a run killed before it could reach __exit__
    sleeper = lan.hosts[0].popen(_SLEEPER)
    try:
        assert sorted(remove_leftovers(lan.prefix)) == sorted(lan.namespaces)
        assert not set(lan.namespaces) & set(list_namespaces())
        assert sleeper.wait(timeout=_GONE_WITHIN_S) == -signal.SIGKILL
    finally:
        remove_leftovers(lan.prefix)
        sleeper.kill()
        sleeper.wait()


def test_leftovers_of_a_dead_process_are_stale() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    prefix = f"ihlan-{finished.pid}-"
    # A live process now holding that pid would make the leftover look owned; that is the safe side.
    if not _is_gone(finished.pid):
        pytest.skip("the pid was reused at once")
    subprocess.run(["ip", "netns", "add", f"{prefix}0-sw"], timeout=_RUN_TIMEOUT_S, check=True)
    try:
        assert prefix in stale_prefixes()
        assert f"ihlan-{os.getpid()}-" not in stale_prefixes()
    finally:
        assert remove_leftovers(prefix) == [f"{prefix}0-sw"]


@pytest.mark.parametrize("prefix", ["", "ihlan", "other-", "IHLAN-"])
def test_remove_leftovers_only_touches_ihlan_names(prefix: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        remove_leftovers(prefix)
