"""Count mDNS datagrams and share-API status polls crossing a bridge, by sender, as JSON lines.

python bench/scripts/count_packets.py ihlan-br0 [--every 0.2]

Run inside the switch's namespace. The bridge is put in promiscuous mode (for as long as the socket is
open) so that it passes up every frame it forwards, unicast ones included, and each frame is seen once.
Every `--every` seconds a line with the time and the running totals is printed:
{"t": ..., "mdns": {"198.18.0.10": [packets, bytes], ...}, "polls": {"198.18.0.10": requests, ...}}
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

_ETH_P_ALL = 0x0003
_ETH_P_IP = 0x0800
_SOL_PACKET = 263
_PACKET_ADD_MEMBERSHIP = 1
_PACKET_MR_PROMISC = 1
_PACKET_OUTGOING = 4
_ETH_HEADER = 14
_UDP = 17
_TCP = 6
_MDNS_PORT = 5353
_SHARE_PORT = 11436
_STATUS_REQUEST = b"GET /_inferhub/v1/status"
_FRAME_MAX = 65536


def open_socket(interface: str) -> socket.socket:
    """Open a raw socket on `interface` that sees every frame the bridge forwards."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.bind((interface, 0))
    mreq = struct.pack("iHH8s", socket.if_nametoindex(interface), _PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(_SOL_PACKET, _PACKET_ADD_MEMBERSHIP, mreq)
    return sock


def classify(frame: bytes) -> tuple[str, str] | None:
    """Return ("mdns" or "poll", sender address) for a frame worth counting, else None."""
    if len(frame) < _ETH_HEADER + 20 or struct.unpack_from("!H", frame, 12)[0] != _ETH_P_IP:
        return None
    ip = _ETH_HEADER
    header_len = (frame[ip] & 0x0F) * 4
    if struct.unpack_from("!H", frame, ip + 6)[0] & 0x1FFF:
        return None  # a later fragment: its datagram was counted with the first
    protocol, sender = frame[ip + 9], socket.inet_ntoa(frame[ip + 12 : ip + 16])
    transport = ip + header_len
    if len(frame) < transport + (20 if protocol == _TCP else 8):
        return None
    source_port, dest_port = struct.unpack_from("!HH", frame, transport)
    if protocol == _UDP and _MDNS_PORT in (source_port, dest_port):
        return "mdns", sender
    if protocol == _TCP and dest_port == _SHARE_PORT:
        payload = transport + (frame[transport + 12] >> 4) * 4
        if frame[payload : payload + len(_STATUS_REQUEST)] == _STATUS_REQUEST:
            return "poll", sender
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("interface")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between lines")
    args = parser.parse_args()
    sock = open_socket(args.interface)
    sock.settimeout(args.every)
    mdns: dict[str, list[int]] = {}
    polls: dict[str, int] = {}
    next_line = 0.0
    while True:
        if (now := time.time()) >= next_line:
            print(json.dumps({"t": now, "mdns": mdns, "polls": polls}), flush=True)
            next_line = now + args.every
        try:
            frame, address = sock.recvfrom(_FRAME_MAX)
        except TimeoutError:
            continue
        if address[2] == _PACKET_OUTGOING or (found := classify(frame)) is None:
            continue
        kind, sender = found
        if kind == "mdns":
            counts = mdns.setdefault(sender, [0, 0])
            counts[0] += 1
            counts[1] += len(frame) - _ETH_HEADER
        else:
            polls[sender] = polls.get(sender, 0) + 1


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
