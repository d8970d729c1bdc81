"""Print the first `_ihtest._tcp.local.` service seen on one address: `mdns_browse.py ADDRESS TIMEOUT_S`.

The service is printed as one line of JSON with its addresses and TXT properties.

Exits 1 if none is seen and resolved in time. `seen_after_s` is how long browsing took to see it.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

SERVICE_TYPE = "_ihtest._tcp.local."


def main() -> int:
    """Browse, resolve the first service added, and print it."""
    address, timeout_s = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + timeout_s
    added: list[str] = []
    seen = threading.Event()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            added.append(name)
            seen.set()

    zc = Zeroconf(interfaces=[address])
    started = time.monotonic()
    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        if not seen.wait(timeout_s):
            print(f"no {SERVICE_TYPE} service seen in {timeout_s} s", file=sys.stderr)
            return 1
        seen_after_s = time.monotonic() - started
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        info = zc.get_service_info(SERVICE_TYPE, added[0], timeout=remaining_ms)
        if info is None:
            print(f"{added[0]} was seen but could not be resolved", file=sys.stderr)
            return 1
        properties = {key.decode(): (value or b"").decode() for key, value in info.properties.items()}
        result = {
            "name": info.name,
            "addresses": info.parsed_addresses(),
            "properties": properties,
            "seen_after_s": round(seen_after_s, 3),
            "resolved_after_s": round(time.monotonic() - started, 3),
        }
        print(json.dumps(result))
        return 0
    finally:
        browser.cancel()
        zc.close()


if __name__ == "__main__":
    sys.exit(main())
