"""Call a node's share API as a caller that may not belong to its pool; print what it answered.

python tests/lan/scripts/try_share.py https://HOST:11436 use|manage [CONFIG_DIR]

`use` sends the status poll, the roster, listings, inference, a metrics scrape and a health check a
member would send; `manage` sends the model management calls. With CONFIG_DIR the calls present the
certificate of that machine's private pool (its member certificate); without one, none. Prints one JSON
list of [method, path, status, body], the status "handshake refused" where TLS did not let the call through.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from inferhub_desktop.core import PrivatePool, load_identity

CALLS = {
    "use": [
        ("GET", "/_inferhub/v1/status", b""),
        ("GET", "/_inferhub/v1/roster", b""),
        ("GET", "/api/tags", b""),
        ("GET", "/api/ps", b""),
        ("POST", "/api/show", b'{"model":"llama3"}'),
        ("POST", "/api/generate", b'{"model":"llama3","prompt":"hi","stream":false}'),
        ("POST", "/v1/chat/completions", b'{"model":"llama3","messages":[{"role":"user","content":"hi"}]}'),
        ("GET", "/metrics", b""),
        ("GET", "/health", b""),
    ],
    "manage": [
        ("DELETE", "/api/delete", b'{"model":"llama3"}'),
        ("POST", "/api/create", b'{"model":"mine","from":"llama3"}'),
        ("POST", "/api/push", b'{"model":"llama3"}'),
        ("POST", "/api/copy", b'{"source":"llama3","destination":"mine"}'),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64, b""),
        ("POST", "/api/blobs/sha256:" + "0" * 64, b"some bytes"),
    ],
}


def main() -> int:
    url, mode, *config = sys.argv[1:]
    if config:
        pool = PrivatePool.load(Path(config[0]), load_identity(Path(config[0])))
        assert pool is not None, "that machine is in no private pool"
        context = pool.client_context
    else:
        # A caller with no certificate, which does not care whom it talks to.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    answers = []
    for method, path, body in CALLS[mode]:
        request = urllib.request.Request(url + path, data=body or None, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as reply:
                answers.append([method, path, reply.status, reply.read().decode()[:200]])
        except urllib.error.HTTPError as error:
            answers.append([method, path, error.code, error.read().decode()[:200]])
        except (urllib.error.URLError, ssl.SSLError, ConnectionError) as error:
            answers.append([method, path, "handshake refused", str(error)[:200]])
    print(json.dumps(answers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
