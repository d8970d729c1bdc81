"""Send one request to a local API and print, as they arrive, the answer's head and body lines.

python tests/lan/scripts/ask.py URL JSON_BODY [HEADER:VALUE ...]

The first line printed is {"status": ..., "node": ...}; each later one is a line of the body.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    url, body, *headers = sys.argv[1:]
    request = urllib.request.Request(url, data=body.encode(), method="POST")
    for header in headers:
        name, _, value = header.partition(":")
        request.add_header(name, value.strip())
    try:
        reply = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        reply = error
    with reply:
        print(json.dumps({"status": reply.status, "node": reply.headers.get("X-InferHub-Node")}), flush=True)
        for line in reply:
            print(line.decode().rstrip("\n"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
