"""Call a node's share API as a caller that may not belong to its pool; print what it answered.

python tests/lan/scripts/try_share.py http://HOST:11436 use|replay|manage [JOIN_CODE]

`use` sends the status poll, listings and inference a member would send; `replay` sends one inference
request twice, as a captured request is replayed; `manage` sends the model management calls. Requests
are signed with JOIN_CODE's pool key when one is given, else unsigned. Prints one JSON list of
[method, path, status, body].
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from inferhub_desktop.core import PoolKey, read_join_code
from inferhub_desktop.core.wire.headers import AUTH_HEADER

GENERATE = ("POST", "/api/generate", b'{"model":"llama3","prompt":"hi","stream":false}')
CALLS = {
    "use": [
        ("GET", "/_inferhub/v1/status", b""),
        ("GET", "/api/tags", b""),
        ("GET", "/api/ps", b""),
        ("POST", "/api/show", b'{"model":"llama3"}'),
        GENERATE,
        ("POST", "/v1/chat/completions", b'{"model":"llama3","messages":[{"role":"user","content":"hi"}]}'),
        ("GET", "/metrics", b""),
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
SENDER = "00000000-0000-4000-8000-000000000000"


def main() -> int:
    url, mode, *code = sys.argv[1:]
    key = PoolKey(read_join_code(code[0])) if code else None
    answers = []
    if mode == "replay":
        method, path, body = GENERATE
        auth = key.sign_request(SENDER, method, path, body) if key else None
        calls = [(method, path, body, auth), (method, path, body, auth)]
    else:
        calls = [(m, p, b, key.sign_request(SENDER, m, p, b) if key else None) for m, p, b in CALLS[mode]]
    for method, path, body, auth in calls:
        request = urllib.request.Request(url + path, data=body or None, method=method)
        request.add_header("Content-Type", "application/json")
        if auth is not None:
            request.add_header(AUTH_HEADER, auth)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                answers.append([method, path, reply.status, reply.read().decode()[:200]])
        except urllib.error.HTTPError as error:
            answers.append([method, path, error.code, error.read().decode()[:200]])
    print(json.dumps(answers), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
