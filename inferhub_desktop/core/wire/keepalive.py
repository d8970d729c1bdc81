"""TCP keepalive: the kernel notices a machine that vanished (power lost, cable out, asleep) by its own
probes, sent only while a connection is quiet, with no byte of ours and no wake-up of this process."""

from __future__ import annotations

import socket


def keep_alive(
    sock: socket.socket | None, *, idle_s: int, interval_s: int, probes: int, writes_too: bool = False
) -> None:
    """Have the kernel end the connection (the reader gets TimeoutError) once the other machine has
    answered nothing for about `idle_s + interval_s * probes` seconds; with `writes_too`, also once bytes
    sent to it have waited that long to be taken."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Linux and Windows 10 name them so; macOS calls the idle time TCP_KEEPALIVE.
    for option, value in (
        ("TCP_KEEPIDLE", idle_s),
        ("TCP_KEEPALIVE", idle_s),
        ("TCP_KEEPINTVL", interval_s),
        ("TCP_KEEPCNT", probes),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    # Probes wait while bytes sent are unacknowledged, and retransmitting them gives up only after ~15
    # minutes. Linux can bound that wait too, but also ends a connection whose reader stalls that long
    # (a disk taking a blob, say), so only connections whose reader never stalls ask for it.
    if writes_too and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000 * (idle_s + interval_s * probes))
