"""Announce a service over mDNS on one address: `mdns_announce.py ADDRESS INSTANCE TOKEN`.

The service is `INSTANCE._ihtest._tcp.local.` with the TXT record `token=TOKEN`.

Prints `registered` once the name is probed and announced, says goodbye on SIGTERM or SIGINT, and exits 0.
"""

from __future__ import annotations

import signal
import socket
import sys

from zeroconf import ServiceInfo, Zeroconf

SERVICE_TYPE = "_ihtest._tcp.local."
_PORT = 11436


def main() -> None:
    """Register the service, wait for a stop signal, unregister."""
    address, instance, token = sys.argv[1:]
    # Blocked before zeroconf starts its thread, so every thread inherits the mask and sigwait gets them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(address)],
        port=_PORT,
        properties={"token": token},
        server=f"{instance}.local.",
    )
    zc = Zeroconf(interfaces=[address])
    try:
        zc.register_service(info)
        print("registered", flush=True)
        signal.sigwait(stop_signals)
        zc.unregister_service(info)
    finally:
        zc.close()


if __name__ == "__main__":
    main()
