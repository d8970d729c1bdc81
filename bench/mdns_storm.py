"""Print what mDNS carries when N nodes join a LAN at once: packets, queries, answers and bytes, the largest
packet, and whether every node found every other.

    python -m bench.mdns_storm [--nodes 16 64 256] [--window 40]

Each size runs on one host of a fresh simulated LAN (tests/lan/netns.py, so root is needed): N nodes'
discovery, exactly as a node runs it (core/discovery.py, python-zeroconf), started together in one
process on the host's address, and a listener on the mDNS group counting every datagram for `--window`
seconds. Only discovery runs: the figures are what the LAN carries, not what the nodes' status polls
cost (bench/scale.py measures those).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import time
import uuid

from inferhub_desktop.core.discovery import Discovery
from inferhub_desktop.core.peers import PeerAnnouncement
from tests.lan.netns import Lan, netns_unavailable
from tests.support import ROOT

_GROUP = "224.0.0.251"
_PORT = 5353


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("", _PORT))
    group = struct.pack("4s4s", socket.inet_aton(_GROUP), socket.inet_aton(address))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
    sock.setblocking(False)
    return sock


async def storm(nodes: int, window_s: float, address: str) -> str:
    """Start `nodes` nodes' discovery at once and count the mDNS datagrams; return the row."""
    sock = _listener(address)
    counts = {"packets": 0, "queries": 0, "answers": 0, "bytes": 0, "largest": 0, "first_10s": 0}
    found: set[tuple[int, str]] = set()
    loop = asyncio.get_running_loop()
    started = time.monotonic()

    def readable() -> None:
        while True:
            try:
                data = sock.recv(9000)
            except BlockingIOError:
                return
            counts["packets"] += 1
            counts["bytes"] += len(data)
            counts["largest"] = max(counts["largest"], len(data))
            counts["first_10s"] += len(data) if time.monotonic() - started < 10 else 0
            # The QR bit: a response, else a query.
            counts["answers" if struct.unpack("!H", data[2:4])[0] & 0x8000 else "queries"] += 1

    loop.add_reader(sock.fileno(), readable)
    discoveries: list[Discovery] = []

    async def join(index: int) -> None:
        node_id = str(uuid.uuid4())
        discovery = Discovery(
            node_id, (address,), lambda seen: found.add((index, seen.node_id)), lambda endpoint: None
        )
        discoveries.append(discovery)
        await discovery.start(
            PeerAnnouncement(
                node_id=node_id,
                name=f"node{index:03d}",
                address="",
                port=11436 + index,
                share=True,
                gpu="RTX 4090",
                vram_free_mib=16384,
                vram_total_mib=24564,
                active=0,
                slots=2,
                models_hash="0123456789ab",
                pool="",
                tls="",
            )
        )

    await asyncio.gather(*(join(i) for i in range(nodes)))
    await asyncio.sleep(max(0.0, window_s - (time.monotonic() - started)))
    loop.remove_reader(sock.fileno())
    sock.close()
    for discovery in discoveries:
        await discovery.close()
    return (
        f"{nodes:>5}{counts['packets']:>9}{counts['queries']:>9}{counts['answers']:>9}"
        f"{counts['bytes'] / 1e6:>9.2f}{counts['first_10s'] / 10 / 1024:>12.0f}{counts['largest']:>9}"
        f"{len(found):>9}/{nodes * (nodes - 1)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # the host's address, in its namespace
    args = parser.parse_args()
    if args.inside:
        print(asyncio.run(storm(args.nodes[0], args.window, args.inside)), flush=True)
        return
    if why := netns_unavailable():
        sys.exit(f"bench.mdns_storm needs network namespaces: {why}")
    head = f"{'nodes':>5}{'packets':>9}{'queries':>9}{'answers':>9}{'MB':>9}{'KB/s 0-10s':>12}{'largest':>9}"
    print(f"{head}  found")
    for nodes in args.nodes:
        with Lan(1) as lan:
            host = lan.hosts[0]
            command = [sys.executable, "-m", "bench.mdns_storm", "--nodes", str(nodes)]
            command += ["--window", str(args.window), "--inside", host.ip]
            done = host.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.window + 120)
            if done.returncode:
                raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
            print(done.stdout.rstrip().splitlines()[-1], flush=True)
    print("KB/s 0-10s: what the group carried in the first ten seconds; found: nodes that saw each other")


if __name__ == "__main__":
    main()
