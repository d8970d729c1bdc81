"""Poll a node's peer list and print a JSON line, with the time, whenever it changes.

python tests/lan/scripts/watch_peers.py http://127.0.0.1:11435
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

_POLL_S = 0.05


def summary(peers: list[dict]) -> list[dict]:
    """Keep what the LAN tests look at: who, sharing, which models, which GPU data."""
    return sorted(
        (
            {
                "name": p["name"],
                "share": p["share"],
                "models": sorted(m["name"] for m in p["status"]["backend"]["installed"]),
                "gpu": (p["status"].get("telemetry") or {}).get("summary"),
                "ram_total_mib": ((p["status"].get("telemetry") or {}).get("system") or {}).get(
                    "ram_total_mib"
                ),
            }
            for p in peers
        ),
        key=lambda p: p["name"],
    )


def main() -> None:
    url = sys.argv[1] + "/_inferhub/v1/peers"
    last = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                current = summary(json.load(reply))
        except OSError:
            current = None
        if current != last and current is not None:
            print(json.dumps({"t": time.time(), "peers": current}), flush=True)
            last = current
        time.sleep(_POLL_S)


if __name__ == "__main__":
    main()
