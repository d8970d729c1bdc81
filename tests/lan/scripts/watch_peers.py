"""Poll a node's peer list and print a JSON line, with the time, whenever it changes.

python tests/lan/scripts/watch_peers.py http://127.0.0.1:11435 CONFIG_DIR

The node's control token is read from CONFIG_DIR, as its owner's commands read it.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

from inferhub_desktop.core import CONTROL_HEADER, ConfigError, read_control_token

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
    url, config_dir = sys.argv[1] + "/_inferhub/v1/peers", Path(sys.argv[2])
    last = None
    while True:
        try:
            request = urllib.request.Request(url, headers={CONTROL_HEADER: read_control_token(config_dir)})
            with urllib.request.urlopen(request, timeout=1) as reply:
                current = summary(json.load(reply))
        except (OSError, ConfigError):  # the node has not started yet
            current = None
        if current != last and current is not None:
            print(json.dumps({"t": time.time(), "peers": current}), flush=True)
            last = current
        time.sleep(_POLL_S)


if __name__ == "__main__":
    main()
