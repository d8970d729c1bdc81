"""Random requests at a running node's local and share APIs, sent as raw bytes.

A request may be a well-formed Ollama call with odd JSON, odd headers or an odd path, or bytes that are
not quite HTTP. Each must get a well-formed HTTP response below 500, or a 5xx whose body is an Ollama or
OpenAI error (a model server's own failure, relayed, is the server's); a request that is not HTTP may
instead have its connection closed. No exception may escape a handler into the node's log, and after
every request the node must still answer `GET /api/version` and `GET /metrics` on both APIs.

The node keeps its state from one request to the next, so a request that breaks it would make every later
one fail: Hypothesis only generates the requests here, and the test collects what went wrong, with the
request that did it, instead of letting Hypothesis shrink a failure that later requests inherit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inferhub_desktop.core import CONTROL_HEADER, TOKEN_FILE, Node
from inferhub_desktop.core.identity import node_id_of
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import LoopThread, fixed_identity, node_settings

# A complete request is answered within this, or the node has hung.
_ANSWER_S = 10.0
# A request the node may rightly wait on (a body that never ends, a head never finished) is dropped then.
_PATIENCE_S = 0.5
TRACEBACK_MARKS = (b"Traceback (most recent call last)", b'File "')
# What the node says when an exception reached its error middleware: a bug, whatever the status.
INTERNAL_ERROR = b"internal error in the InferHub node"
EXAMPLES = {"random": 300, "malformed": 150}
# The node's id, fixed so that requests can name it.
# The node's identity is made from this seed, so the node id is known before it starts.
NODE_SEED = 0xF022
NODE_ID = node_id_of(ec.derive_private_key(NODE_SEED, ec.SECP256R1()).public_key())
# The node's control token, written before it starts, so the owner's calls can be drawn.
CONTROL_TOKEN = "fuzz-control-token"
_MAX_REPORTED = 12

# -- what is sent --------------------------------------------------------------------------------------

METHODS = [
    *("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"),
    *("TRACE", "CONNECT", "PROPFIND", "M-SEARCH", "QUERY", "MKCOL", "PURGE", "LINK", "FOO"),
]
TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KNOWN_PATHS = [
    *("/", "/api/version", "/api/status", "/api/tags", "/api/ps", "/api/show", "/api/generate"),
    *("/api/chat", "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create"),
    *("/api/copy", "/api/delete", "/api/blobs/sha256:" + "0" * 64, "/api/blobs/x", "/api/me"),
    *("/api/signout", "/api/user/keys/abc", "/api/experimental/web_search"),
    *("/api/experimental/web_fetch", "/api/experimental/model-recommendations", "/api/", "/api"),
    *("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"),
    *("/v1/audio/transcriptions", "/v1/models", "/v1/models/llama3", "/v1/models/", "/v1/", "/v1"),
    *("/_inferhub/v1/status", "/_inferhub/v1/peers", "/_inferhub/v1/switches", "/_inferhub/v1/route"),
    *("/_inferhub/v1/audit", "/_inferhub/v1/pool", "/_inferhub/v1/", "/_inferhub/", "/metrics"),
]
QUERIES = ["", "?model=llama3", "?model=", "?limit=5", "?limit=-1", "?limit=99999999999999999999"]
INTERESTING_HEADERS: dict[str, list[bytes]] = {
    "Host": [
        *(b"127.0.0.1", b"localhost:11435", b"evil.example", b"", b"[::1]:80", b"[", b"0.0.0.0"),
        *(b"10.0.0.1", b"a.local", b"user@host", b"localhost:abc", b"::1", b"x" * 300, b"[::1%eth0]"),
    ],
    "Origin": [
        *(b"http://localhost", b"http://localhost:3000", b"https://evil.example", b"null", b"app://x"),
        *(b"file://", b"*", b"http://127.0.0.1:99999", b"http://localhost:\xff", b"http://127.0.0.1"),
        b"vscode-webview://\xc3\xa9",
    ],
    "Content-Type": [
        *(b"application/json", b"text/plain", b"application/x-ndjson", b"multipart/form-data"),
        *(b"multipart/form-data; boundary=x", b"application/json; charset=latin-1", b";;;", b"\xff/\xff"),
    ],
    "X-InferHub-Node": [b"test-node", b"TEST-NODE", b"", b" ", b"nobody", b"test-node, other", b"\xff"],
    # The node's own id among them makes the request a loop (508).
    "X-InferHub-Via": [b"", b",", b"a,b,c", NODE_ID.encode(), b"x, " + NODE_ID.encode(), b"," * 200],
    "X-InferHub-Auth": [b"", b"v1 x", b"garbage", b"v1 " + b"A" * 500],
    "Accept-Encoding": [b"gzip", b"br", b"identity", b"*"],
    "Content-Encoding": [b"gzip", b"deflate", b"br", b"zstd", b"identity", b"x"],
    "Expect": [b"100-continue", b"x"],
    "Accept": [b"text/html", b"*/*", b"application/json"],
    "Authorization": [b"Bearer ollama", b"Basic !!!", b""],
    "User-Agent": [b"GitHubCopilotChat/1", b"ollama-python/0.6.3", b""],
    "Cookie": [b"a=b", b"\x00"],
    "Range": [b"bytes=0-1", b"bytes=-1"],
    "Keep-Alive": [b"timeout=0", b"x"],
    # These change how a request is framed: with them the node may rightly wait for more bytes.
    "Content-Length": [b"0", b"-1", b"abc", b"1e3", b"99999999999999999999", b"5, 5"],
    "Transfer-Encoding": [b"chunked", b"gzip, chunked", b"identity", b"chunked, gzip"],
    "Connection": [b"close", b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings"],
    "Upgrade": [b"websocket", b"h2c"],
    "TE": [b"trailers"],
}
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade"})

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
WILD_TEXT = st.text(st.one_of(st.characters(), _SURROGATES), max_size=24)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    WILD_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(WILD_TEXT, kids, max_size=4)),
    max_leaves=10,
)
# The fake Ollama generates as many tokens as asked: numbers that set a reply's length stay small.
NOT_A_NUMBER = st.one_of(st.none(), st.booleans(), WILD_TEXT, st.lists(JSON_SCALARS, max_size=3))
TOKEN_COUNTS = st.one_of(
    st.integers(-5, 40),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 0.5, -0.0]),
    NOT_A_NUMBER,
)
MODELS = st.one_of(
    st.sampled_from(
        [
            *("llama3", "llama3:latest", "LLAMA3:Latest", "registry.ollama.ai/library/llama3:latest"),
            *("nomic-embed-text", "", " ", "x" * 300, "a/b/c/d:e", ":", "llama3:", "/", "\ud800"),
        ]
    ),
    WILD_TEXT,
    JSON_VALUES,
)
MESSAGES = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), JSON_VALUES),
                "content": st.one_of(WILD_TEXT, JSON_VALUES),
                "images": JSON_VALUES,
                "tool_calls": JSON_VALUES,
            },
        ),
        max_size=4,
    ),
    JSON_VALUES,
)
OPTIONS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "num_predict": TOKEN_COUNTS,
            "temperature": st.one_of(st.floats(allow_nan=True, allow_infinity=True), JSON_VALUES),
            "seed": st.one_of(st.integers(), st.sampled_from([10**40, -(2**64)])),
            "num_ctx": JSON_SCALARS,
            "stop": JSON_VALUES,
        },
    ),
    NOT_A_NUMBER,
)
KEEP_ALIVE = st.one_of(
    st.sampled_from(["0", "0s", "5m", "-1", "-1m", "1h30m", "", "forever", "1e999h", 0, -1, 1800, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    JSON_VALUES,
)
REQUEST_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "model": MODELS,
        "name": MODELS,
        "prompt": st.one_of(WILD_TEXT, JSON_VALUES),
        "messages": MESSAGES,
        "input": st.one_of(WILD_TEXT, st.lists(WILD_TEXT, max_size=3), JSON_VALUES),
        "options": OPTIONS,
        "stream": st.one_of(st.booleans(), JSON_VALUES),
        "keep_alive": KEEP_ALIVE,
        "format": JSON_VALUES,
        "tools": JSON_VALUES,
        "think": JSON_VALUES,
        "raw": JSON_VALUES,
        "suffix": JSON_VALUES,
        "max_tokens": TOKEN_COUNTS,
        "max_completion_tokens": st.one_of(JSON_SCALARS, TOKEN_COUNTS),
        "top_logprobs": JSON_SCALARS,
        "encoding_format": JSON_VALUES,
        "source": MODELS,
        "destination": MODELS,
        "from": MODELS,
        "files": JSON_VALUES,
        "share": JSON_VALUES,
        "local_only": JSON_VALUES,
        "pool_pull": JSON_VALUES,
        "remove": st.one_of(st.none(), WILD_TEXT, st.just("test-node")),
    },
)
REQUEST_OBJECTS = st.builds(
    lambda known, extra: {**extra, **known},
    REQUEST_FIELDS,
    st.dictionaries(WILD_TEXT, JSON_VALUES, max_size=3),
)


def encode_json(value: Any, ascii_only: bool) -> bytes:
    """Encode as JSON, lone surrogates and all (as invalid UTF-8 where they are not escaped)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON request body, often a request object with fields of the wrong type, sometimes mangled."""
    value = draw(st.one_of(REQUEST_OBJECTS, REQUEST_OBJECTS, JSON_VALUES))
    text = encode_json(value, draw(st.booleans()))
    mangle = draw(
        st.sampled_from(["none", "none", "none", "truncate", "append", "prefix", "bom", "twice", "nan"])
    )
    if mangle == "truncate":
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if mangle == "append":
        return text + draw(st.binary(min_size=1, max_size=16))
    if mangle == "prefix":
        return draw(st.sampled_from([b" ", b"\t\r\n", b"\x00", b"\xff"])) + text
    if mangle == "bom":
        return b"\xef\xbb\xbf" + text
    if mangle == "twice":
        return text + b"\n" + text
    if mangle == "nan":
        return text.replace(b"null", draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400"])))
    return text


def nested(depth: int, opener: bytes, closed: bool) -> bytes:
    """JSON nested `depth` deep inside a generate request's prompt, closed or not."""
    closer = {b"[": b"]", b'{"a":': b"}"}[opener]
    return b'{"model":"llama3","prompt":' + opener * depth + (b"0" + closer * depth + b"}" if closed else b"")


# A plausible inference request: a model name of any text, and numbers that set the reply's length.
INFERENCE_BODIES = st.builds(
    lambda model, options, limit, stream, ascii_only: encode_json(
        {
            "model": model,
            "prompt": "hi",
            "messages": [{"role": "user", "content": "hi"}],
            "input": "hi",
            "options": options,
            "max_tokens": limit,
            "stream": stream,
        },
        ascii_only,
    ),
    # A lone surrogate (escaped in the JSON) is a str Python holds but cannot encode as UTF-8.
    st.one_of(MODELS, st.builds("{}{}{}".format, st.text(max_size=3), _SURROGATES, st.text(max_size=3))),
    st.fixed_dictionaries({"num_predict": TOKEN_COUNTS}),
    TOKEN_COUNTS,
    st.booleans(),
    st.just(True),
)
BODIES = st.one_of(
    INFERENCE_BODIES,
    st.just(b""),
    st.binary(max_size=512),
    json_bodies(),
    json_bodies(),
    json_bodies(),
    st.text(max_size=64).map(str.encode),
    # Python's decoder recurses once per level, and gives up near 1000.
    st.builds(
        nested,
        st.one_of(st.integers(1, 50), st.integers(900, 5000)),
        st.sampled_from([b"[", b'{"a":']),
        st.booleans(),
    ),
    # Numbers past what Python reads by default (4300 digits), where the fake Ollama ignores them.
    st.integers(4000, 6000).map(lambda n: b'{"model":"llama3","options":{"seed":' + b"9" * n + b"}}"),
    st.integers(1, 6000).map(lambda n: b"-" + b"1" * n),
    st.sampled_from([b"null", b"[]", b"{}", b'"x"', b"true", b"0", b"{", b"}", b"[{]", b'{"model":}']),
)


@st.composite
def paths(draw: st.DrawFn) -> bytes:
    """A request target: a known path, as it is or with odd additions, or made-up segments."""
    kind = draw(st.sampled_from(["known", "known", "suffix", "segments", "long", "percent"]))
    if kind == "known":
        return (draw(st.sampled_from(KNOWN_PATHS)) + draw(st.sampled_from(QUERIES))).encode()
    if kind == "suffix":
        suffix = draw(
            st.sampled_from(
                ["/", "//", "/..", "/../../etc/passwd", "?", "#frag", "%00", "%2F", "%", "%zz", ";x", ".json"]
            )
        )
        return (draw(st.sampled_from(KNOWN_PATHS)) + suffix).encode()
    if kind == "percent":
        raw = draw(st.binary(max_size=24))
        prefix = draw(st.sampled_from(["/v1/models/", "/_inferhub/v1/route?model=", "/api/blobs/", "/"]))
        return prefix.encode() + b"".join(b"%%%02X" % byte for byte in raw)
    if kind == "long":
        length = draw(st.integers(1000, 12000))
        return (
            draw(st.sampled_from([b"/api/", b"/v1/models/", b"/_inferhub/v1/route?model="])) + b"a" * length
        )
    segments = draw(
        st.lists(st.text(TCHARS.replace("%", "") + ":@=,;", min_size=0, max_size=12), min_size=1, max_size=6)
    )
    return ("/" + "/".join(segments)).encode()


HEADER_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=48).map(str.encode),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=48).map(str.encode),
    # Bytes past ASCII (obs-text), then anything but CR and LF: aiohttp refuses some of them.
    st.binary(max_size=24).map(lambda v: bytes(b | 0x80 for b in v)),
    st.binary(max_size=24).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
)


@st.composite
def headers(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Headers from the list of those the node or aiohttp look at, and made-up ones."""
    names = st.one_of(
        st.sampled_from(sorted(INTERESTING_HEADERS)),
        st.sampled_from(sorted(INTERESTING_HEADERS)),
        st.text(TCHARS, min_size=1, max_size=16),
    )
    result = []
    for name in draw(st.lists(names, max_size=8)):
        values = INTERESTING_HEADERS.get(name)
        value = draw(st.sampled_from(values)) if values and draw(st.booleans()) else draw(HEADER_VALUES)
        result.append((name, value))
    return result


@dataclasses.dataclass(frozen=True)
class Request:
    """A request as the bytes that go on the wire."""

    data: bytes
    # What kind of request it is (for malformed ones, how it is broken).
    label: str = ""
    # A server must answer it: its head and body are whole and framed as its headers say.
    complete: bool = True
    # It is not HTTP as aiohttp reads it: the server may close the connection without an answer.
    malformed: bool = False

    @property
    def method(self) -> str:
        """The method as sent (a broken request line may hold another than the one drawn)."""
        return self.data.split(b" ", 1)[0].decode("latin-1")

    def __repr__(self) -> str:
        # What Hypothesis and the failure report show: the bytes, cut short.
        data = self.data if len(self.data) <= 700 else self.data[:500] + b"..." + self.data[-150:]
        return f"Request({self.label}: {data!r}, {len(self.data)} bytes)"


def chunked(body: bytes, cuts: list[int]) -> bytes:
    pieces = [
        body[a:b] for a, b in itertools.pairwise([0, *sorted(c % (len(body) + 1) for c in cuts), len(body)])
    ]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


# Calls the node answers, each with its method; {model} is a model name, percent-encoded.
CALLS = [
    *[("POST", path) for path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings")],
    *[("POST", path) for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")],
    *[("POST", path) for path in ("/v1/responses", "/v1/messages", "/v1/audio/transcriptions")],
    *[("POST", path) for path in ("/api/show", "/api/pull", "/api/push", "/api/create", "/api/copy")],
    *[("GET", path) for path in ("/api/tags", "/api/ps", "/api/version", "/v1/models", "/v1/models/{model}")],
    *[("POST", path) for path in ("/_inferhub/v1/switches", "/_inferhub/v1/pool", "/api/blobs/{model}")],
    *[("GET", path) for path in ("/_inferhub/v1/route?model={model}", "/_inferhub/v1/audit?limit={model}")],
    *[("GET", path) for path in ("/_inferhub/v1/status", "/_inferhub/v1/peers", "/metrics", "/")],
    ("DELETE", "/api/delete"),
    ("HEAD", "/api/blobs/{model}"),
    ("HEAD", "/api/tags"),
    ("OPTIONS", "/api/chat"),
]
# Headers that change how the node answers, not how the request is framed.
MEANINGFUL = sorted(
    set(INTERESTING_HEADERS) - {"Content-Length", "Transfer-Encoding", "Connection", "Upgrade"}
)


def percent(text: str) -> bytes:
    return b"".join(b"%%%02X" % byte for byte in text.encode("utf-8", "surrogatepass"))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """A request a client could send, framed correctly: mostly a call the node answers, with an odd body
    or headers; else any method, path, headers and body."""
    style = draw(st.sampled_from(["call", "call", "headers", "anything"]))
    if style == "anything":
        # Mostly methods aiohttp's parser knows (it refuses others with a 400 before the node sees them).
        made_up = draw(st.integers(0, 9)) == 9
        method = draw(st.text(TCHARS, min_size=1, max_size=10) if made_up else st.sampled_from(METHODS))
        target = draw(paths())
        fuzzed = draw(headers())
        body = draw(BODIES) if method == "POST" or draw(st.integers(0, 3)) == 3 else b""
    else:
        method, path = draw(st.sampled_from(CALLS))
        model = draw(st.one_of(st.sampled_from(["llama3", "1", "-1", "", "sha256:" + "0" * 64]), WILD_TEXT))
        target = path.encode().replace(b"{model}", percent(model))
        body = draw(BODIES) if method in ("POST", "DELETE") else b""
        names = draw(
            st.lists(st.sampled_from(MEANINGFUL), unique=True, max_size=3 if style == "headers" else 1)
        )
        fuzzed = [(name, draw(st.sampled_from(INTERESTING_HEADERS[name]))) for name in names]
        if "X-InferHub-Node" not in names and draw(st.integers(0, 3)) == 3:
            fuzzed.append(("X-InferHub-Node", b"test-node"))  # pinned to this node: routed all the same
        if path.startswith("/_inferhub/") and draw(st.integers(0, 3)) != 3:
            fuzzed.append((CONTROL_HEADER, CONTROL_TOKEN.encode()))  # the owner, mostly
    lines = [f"{method} ".encode() + target + b" HTTP/1.1"]
    if draw(st.integers(0, 9)) < 9 and not any(name.lower() == "host" for name, _ in fuzzed):
        lines.append(b"Host: 127.0.0.1")
    lines += [name.encode() + b": " + value for name, value in fuzzed]
    if draw(st.booleans()) and body:
        lines.append(b"Transfer-Encoding: chunked")
        payload = chunked(body, draw(st.lists(st.integers(0, 1 << 16), max_size=4)))
    else:
        if body or draw(st.booleans()):
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    framed_by_us = not any(name.lower() in FRAMING_HEADERS for name, _ in fuzzed)
    return Request(b"\r\n".join(lines) + b"\r\n\r\n" + payload, style, complete=framed_by_us)


@st.composite
def malformed_requests(draw: st.DrawFn) -> Request:
    """Bytes that are broken HTTP: bad request lines, headers or chunks, wrong lengths, absurd sizes."""
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    target = draw(st.sampled_from(["/api/version", "/api/generate", "/api/chat", "/v1/chat/completions"]))
    body = draw(BODIES)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    damage = draw(
        st.sampled_from(
            [
                *("bytes", "request-line", "header-line", "many-headers", "huge-header", "long-target"),
                *("bad-chunks", "length-and-chunked", "short-body", "long-body", "http10", "http09"),
                *("no-end", "pipelined", "null-bytes", "obs-fold", "duplicate-length"),
            ]
        )
    )
    if damage == "bytes":
        data = draw(st.binary(min_size=1, max_size=600).filter(lambda d: d.strip(b"\r\n")))
        return Request(data + b"\r\n\r\n", damage, complete=False, malformed=True)
    if damage == "request-line":
        line = draw(
            st.sampled_from(
                [
                    *(b"GET", b"GET /", b"GET / HTTP/9.9", b"GET / HTTP/1.1 extra", b" / HTTP/1.1"),
                    *(b"GET  /api/version HTTP/1.1", b"GET /api/version\x00 HTTP/1.1", b"GET /\xff HTTP/1.1"),
                    *(b"GET * HTTP/1.1", b"GET HTTP/1.1", b"G\xc3\x89T / HTTP/1.1", b"GET / HTTP/1.1\r"),
                    *(b"GET /api/version HTTP/1.1\n", b"\r\nGET /api/version HTTP/1.1", b"GET\t/ HTTP/1.1"),
                    *(b"CONNECT 127.0.0.1:11435 HTTP/1.1", b"CONNECT / HTTP/1.1", b"GET / HTTP/2.0"),
                    *(b"get / HTTP/1.1", b"PRI * HTTP/2.0", b"GET / HTTP/1.1 HTTP/1.1"),
                    *(
                        b"GET //evil.example/api/version HTTP/1.1",
                        b"GET http://evil.example/api/tags HTTP/1.1",
                    ),
                ]
            )
        )
        data = line + b"\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        return Request(data, damage, complete=False, malformed=True)
    if damage == "header-line":
        bad = draw(
            st.sampled_from(
                [
                    *(b"Host 127.0.0.1", b" folded", b"Bad Name: x", b"X:\x00", b"X: a\rb", b": empty"),
                    *(b"X-InferHub-Node: \x7f", b"Origin: http://localhost\x00", b"\xff: \xff", b"X\t: y"),
                ]
            )
        )
        data = head + bad + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        return Request(data, damage, complete=False, malformed=True)
    if damage == "many-headers":
        count = draw(st.integers(100, 3000))
        data = head + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(count)) + b"\r\n"
        return Request(data, damage, complete=False, malformed=True)
    if damage == "huge-header":
        size = draw(st.integers(8000, 100_000))
        name = draw(st.sampled_from([b"X-Big", b"Origin", b"X-InferHub-Node", b"Cookie"]))
        data = head + name + b": " + b"a" * size + b"\r\n\r\n"
        return Request(data, damage, complete=False, malformed=True)
    if damage == "long-target":
        size = draw(st.integers(8000, 100_000))
        data = f"{method} /api/".encode() + b"a" * size + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        return Request(data, damage, complete=False, malformed=True)
    if damage == "bad-chunks":
        chunks = draw(
            st.sampled_from(
                [
                    *(
                        b"zz\r\nabc\r\n0\r\n\r\n",
                        b"5\r\nabc\r\n0\r\n\r\n",
                        b"-1\r\n\r\n",
                        b"3\r\nabcXX0\r\n\r\n",
                    ),
                    *(
                        b"ffffffffffffffffff\r\n",
                        b"3;ext=\x00\r\nabc\r\n0\r\n\r\n",
                        b"0\r\nTrailer: x\r\n\r\n",
                    ),
                    *(
                        b"3\r\nabc\r\n",
                        b"3\r\nabc\r\n0\r\n",
                        b"0x3\r\nabc\r\n0\r\n\r\n",
                        b" 3\r\nabc\r\n0\r\n\r\n",
                    ),
                    *(b"3\nabc\n0\n\n", b"1\r\n{\r\n0\r\n\r\n", b"\r\n\r\n"),
                ]
            )
        )
        return Request(
            head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks,
            damage,
            complete=False,
            malformed=True,
        )
    if damage == "length-and-chunked":
        data = head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, [])
        return Request(data, damage, complete=False, malformed=True)
    if damage == "short-body":
        extra = draw(st.integers(1, 1000))
        data = head + b"Content-Length: %d\r\n\r\n" % (len(body) + extra) + body
        return Request(data, damage, complete=False, malformed=True)
    if damage == "long-body":
        declared = draw(st.integers(0, len(body)))
        data = head + b"Content-Length: %d\r\n\r\n" % declared + body + draw(st.binary(max_size=64))
        return Request(data, damage, complete=False, malformed=True)
    if damage == "http10":
        data = f"{method} {target} HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        return Request(data, damage, complete=False, malformed=True)
    if damage == "http09":
        return Request(f"GET {target}\r\n\r\n".encode(), damage, complete=False, malformed=True)
    if damage == "no-end":
        return Request(head + b"X-Half: ", damage, complete=False, malformed=True)
    if damage == "pipelined":
        data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body + draw(st.binary(max_size=200))
        return Request(data + b"\r\n\r\n", damage, complete=False, malformed=True)
    if damage == "null-bytes":
        data = head.replace(b"Host", b"Ho\x00st") + b"Content-Length: %d\r\n\r\n" % len(body) + body
        return Request(data, damage, complete=False, malformed=True)
    if damage == "obs-fold":
        data = head + b"X-InferHub-Node: test\r\n -node\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        return Request(data, damage, complete=False, malformed=True)
    data = head + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body) + 1) + body
    return Request(data, damage, complete=False, malformed=True)


# -- what comes back -----------------------------------------------------------------------------------

# aiohttp answers an HTTP/0.9 request (`GET /` alone) in kind.
_STATUS_LINE = re.compile(rb"HTTP/(?:1\.[01]|0\.9) ([1-5][0-9][0-9])(?: [^\r\n]*)?")
_source_addresses = itertools.count(1)


class Wire:
    """Read an HTTP response from a blocking socket, all before a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self.buffer = b""
        self.closed = False

    def _fill(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            raise
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise EOFError
        self.buffer += data

    def until(self, mark: bytes) -> bytes:
        while (at := self.buffer.find(mark)) == -1:
            self._fill()
        found, self.buffer = self.buffer[:at], self.buffer[at + len(mark) :]
        return found

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        found, self.buffer = self.buffer[:size], self.buffer[size:]
        return found

    def rest(self) -> bytes:
        with contextlib.suppress(EOFError):
            while True:
                self._fill()
        found, self.buffer = self.buffer, b""
        return found


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Malformed(Exception):
    """The node's response is not well-formed HTTP."""


def read_answer(wire: Wire, method: str) -> Answer:
    """Read one response; raise EOFError if the connection closed first, TimeoutError if none came, and
    Malformed if it is not well-formed HTTP/1.1."""
    while True:
        head = wire.until(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        if not (found := _STATUS_LINE.fullmatch(status_line)):
            raise Malformed(f"bad status line {status_line[:100]!r}")
        status = int(found[1])
        if status >= 200:
            break
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise Malformed(f"bad header line {line[:100]!r}")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    try:
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            pieces = []
            while size := int(wire.until(b"\r\n").split(b";")[0], 16):
                pieces.append(wire.take(size))
                if wire.take(2) != b"\r\n":
                    raise Malformed("a chunk does not end in CRLF")
            while wire.until(b"\r\n"):
                pass  # trailers
            body = b"".join(pieces)
        elif "content-length" in headers:
            body = wire.take(int(headers["content-length"]))
        else:
            body = wire.rest()
    except EOFError:
        raise Malformed(f"HTTP {status}: the connection closed in the middle of the body") from None
    except ValueError as exc:
        raise Malformed(f"HTTP {status}: bad framing ({exc})") from None
    return Answer(status, headers, body)


def exchange(port: int, data: bytes, method: str, wait_s: float) -> Answer:
    """Send bytes from a fresh loopback address (each has its own allowance of requests per second) and
    read the response."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        index = next(_source_addresses)
        with contextlib.suppress(OSError):
            sock.bind((f"127.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255 or 1}", 0))
        sock.settimeout(wait_s)
        sock.connect(("127.0.0.1", port))
        with contextlib.suppress(OSError):  # the node may close the connection before reading it all
            sock.sendall(data)
        return read_answer(Wire(sock, time.monotonic() + wait_s), method)


def is_error_body(body: bytes) -> bool:
    """Whether a body is an Ollama error, `{"error": "..."}`, or an OpenAI one, `{"error": {"message"}}`."""
    try:
        value = json.loads(body)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    error = value.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return isinstance(error, str) and bool(error)


# -- the node ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Rig:
    """A fake Ollama and a node in front of it, each on its own event loop in a thread, and their logs."""

    node: Node
    fake: FakeOllama
    node_loop: LoopThread
    fake_loop: LoopThread
    node_thread: int
    fake_thread: int
    caplog: pytest.LogCaptureFixture
    switches: dict[str, bool]
    models: dict[str, FakeModel]

    def port(self, api: str) -> int:
        return self.node.api_port if api == "local" else self.node.share_port

    def errors(self, start: int, thread: int) -> list[logging.LogRecord]:
        """Return the error records logged on `thread` since record `start`, less aiohttp's report of
        HTTP it could not parse (it answers that with a 400 itself)."""
        return [
            r
            for r in list(self.caplog.records)[start:]
            if r.thread == thread
            and r.levelno >= logging.ERROR
            and not (r.exc_info and isinstance(r.exc_info[1], HttpProcessingError))
        ]

    def health(self) -> str | None:
        """Say what the node no longer answers as it should, or None when it is well."""
        for api in ("local", "share"):
            for path, wanted in (("/api/version", b'"version"'), ("/metrics", b"inferhub_sharing")):
                request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
                try:
                    answer = exchange(self.port(api), request, "GET", _ANSWER_S)
                except (OSError, EOFError, TimeoutError, Malformed) as exc:
                    return f"GET {path} on the {api} API failed: {type(exc).__name__} {exc}"
                if answer.status != 200 or wanted not in answer.body:
                    return f"GET {path} on the {api} API answered {answer.status}: {answer.body[:300]!r}"
        return None

    def restore(self) -> None:
        """Undo what a request may have changed: the switches and the fake's models. (The control API
        makes no pool: only the owner's files do.)"""

        async def on_node() -> None:
            self.node.switch(self.switches)

        async def on_fake() -> None:
            self.fake.models = dict(self.models)
            self.fake.requests.clear()

        self.node_loop.run(on_node())
        self.fake_loop.run(on_fake())


async def _thread_id() -> int:
    return threading.get_ident()


@contextlib.contextmanager
def running(tmp_path: Path, caplog: pytest.LogCaptureFixture, **overrides: Any) -> Iterator[Rig]:
    """Run a fake Ollama and a node that shares its GPU, on loopback only."""
    models: list[str | FakeModel] = [
        "llama3:latest",
        FakeModel("nomic-embed-text", capabilities=("embedding",)),
    ]
    with LoopThread() as fake_loop, LoopThread() as node_loop:
        fake = FakeOllama(models, tokens_per_second=100_000.0)
        fake_loop.run(fake.start())
        try:
            assert fixed_identity(tmp_path, NODE_SEED) == NODE_ID
            (tmp_path / TOKEN_FILE).write_text(CONTROL_TOKEN)
            settings = node_settings(tmp_path, fake.url, share=True, **overrides)
            assert settings.settings.interfaces == ("127.0.0.1",)
            node = Node(settings, environ={})
            node_loop.run(node.start())
            try:
                switches = node_loop.run(_switches(node))
                yield Rig(
                    node,
                    fake,
                    node_loop,
                    fake_loop,
                    node_loop.run(_thread_id()),
                    fake_loop.run(_thread_id()),
                    caplog,
                    switches,
                    dict(fake.models),
                )
            finally:
                node_loop.run(node.close())
        finally:
            fake_loop.run(fake.close())


async def _switches(node: Node) -> dict[str, bool]:
    return node.switch()


# -- the property --------------------------------------------------------------------------------------


def where(record: logging.LogRecord) -> str:
    """Name an error by its exception and the innermost line of InferHub (or else of anything) it passed."""
    if not record.exc_info or record.exc_info[1] is None:
        return record.getMessage()[:120]
    exc = record.exc_info[1]
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "inferhub_desktop" in f.filename] or frames
    place = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__} at {place}"


def describe(record: logging.LogRecord) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    return f"{record.getMessage()[:200]}: {str(exc)[:300]}" if exc else record.getMessage()[:300]


@dataclasses.dataclass
class Findings:
    """What went wrong, one entry per kind of failure with the shortest request that showed it."""

    by_kind: dict[str, tuple[Request, str]] = dataclasses.field(default_factory=dict)
    # The requests after which the node no longer answered as it should (it was restarted each time).
    broke: list[Request] = dataclasses.field(default_factory=list)
    tried: int = 0
    backend_faults: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    closed: int = 0
    waited: int = 0

    def add(self, kind: str, request: Request, detail: str) -> None:
        known = self.by_kind.get(kind)
        if known is None or len(request.data) < len(known[0].data):
            self.by_kind[kind] = (request, detail)

    def report(self) -> str:
        return "\n".join(
            f"- {kind}\n    request: {request!r}\n    {detail}"
            for kind, (request, detail) in list(self.by_kind.items())[:_MAX_REPORTED]
        )


def check(rig: Rig, api: str, request: Request, findings: Findings) -> bool:
    """Send one request and note everything wrong with how the node took it; return whether the node is
    still well."""
    start = len(rig.caplog.records)
    wait_s = _ANSWER_S if request.complete else _PATIENCE_S
    answer: Answer | None = None
    try:
        answer = exchange(rig.port(api), request.data, request.method, wait_s)
    except EOFError:
        findings.closed += 1
        if not request.malformed:
            findings.add("closed the connection without answering", request, "")
    except TimeoutError:
        findings.waited += 1
        if request.complete:
            findings.add(f"no answer within {_ANSWER_S:g} s", request, "")
    except Malformed as exc:
        findings.add(f"malformed response: {str(exc)[:80]}", request, str(exc))
    except OSError as exc:
        findings.add(f"could not talk to the node: {type(exc).__name__}", request, str(exc))
    backend_failed = bool(rig.errors(start, rig.fake_thread))
    findings.backend_faults += backend_failed
    if answer is not None:
        findings.statuses[answer.status] = findings.statuses.get(answer.status, 0) + 1
        if any(mark in answer.body for mark in TRACEBACK_MARKS):
            findings.add(
                f"HTTP {answer.status} with a traceback in the body", request, repr(answer.body[:600])
            )
        if INTERNAL_ERROR in answer.body:
            findings.add(f"HTTP {answer.status}: internal error", request, repr(answer.body[:300]))
        # A HEAD answer has no body to carry an error in, by HTTP's rules.
        elif (
            answer.status >= 500
            and request.method != "HEAD"
            and not backend_failed
            and not is_error_body(answer.body)
        ):
            findings.add(f"HTTP {answer.status} without an error body", request, repr(answer.body[:300]))
    problem = rig.health()
    # Looked at after the health check, so a handler still running after the answer has logged by now.
    for record in rig.errors(start, rig.node_thread):
        findings.add(f"logged: {where(record)}", request, describe(record))
    if problem:
        findings.broke.append(request)
        findings.add("the node stopped answering well afterwards", request, problem)
        return False
    rig.restore()
    return True


def generate(strategy: st.SearchStrategy[Request], examples: int) -> list[Request]:
    """Draw the requests with Hypothesis, before any server runs: its check that strategies leave the
    `random` module alone would otherwise see zeroconf's and the fake Ollama's use of it in their threads."""
    drawn: list[Request] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(strategy)
    def draw(request: Request) -> None:
        drawn.append(request)

    draw()
    return drawn


def post(path: str, body: bytes, *headers: bytes) -> Request:
    head = b"".join(h + b"\r\n" for h in headers)
    data = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n" % (
        path.encode(),
        head,
        len(body),
    )
    return Request(data + body, "seed")


# Requests that found bugs once, tried before the random ones so that they are always tried.
SEEDS = {
    "random": [
        Request(b"CONNECT / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "seed"),
        post("/api/generate", b'{"model":"llama3","prompt":' + b"[" * 2000 + b"]" * 2000 + b"}"),
        post("/api/chat", b'{"model":"llama3","options":{"seed":' + b"9" * 5000 + b"}}"),
        post("/api/generate", b"not gzip", b"Content-Encoding: gzip"),
        post(
            "/api/generate",
            b'{"model":"llama3","prompt":"hi","options":{"num_predict":1e400}}',
            b"X-InferHub-Node: test-node",
        ),
        post("/api/generate", b'{"model":"\\ud800","prompt":"hi","stream":false}'),
    ],
    "malformed": [
        Request(b"CONNECT 127.0.0.1:11435 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "seed", malformed=True),
        Request(b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n", "seed", malformed=True),
    ],
}
# A node that no longer answers well is started again, this many times at most, so later requests still
# test something.
_MAX_RESTARTS = 20


def summary(api: str, family: str, findings: Findings, elapsed_s: float) -> str:
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(findings.statuses.items()))
    return (
        f"{api} API, {family} requests: {findings.tried} cases tried in {elapsed_s:.1f} s "
        f"(statuses {statuses}; {findings.closed} closed without an answer, {findings.waited} left waiting "
        f"for more bytes, {findings.backend_faults} with the fake Ollama failing on its own, "
        f"{len(findings.broke)} restarts of a broken node)"
    )


@pytest.mark.parametrize("family", ["random", "malformed"])
@pytest.mark.parametrize("api", ["local", "share"])
def test_the_node_answers_every_request_well_and_stays_up(
    api: str, family: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strategy: Callable[[], st.SearchStrategy[Request]] = (
        requests if family == "random" else malformed_requests
    )
    findings = Findings()
    started = time.monotonic()
    drawn = SEEDS[family] + generate(strategy(), EXAMPLES[family])
    # With pool pulls allowed, the share API relays /api/pull too.
    with contextlib.ExitStack() as stack:
        rig = stack.enter_context(running(tmp_path, caplog, pool_pull=api == "share"))
        assert rig.health() is None
        for request in drawn:
            findings.tried += 1
            if not check(rig, api, request, findings):
                stack.close()
                if len(findings.broke) > _MAX_RESTARTS:
                    break
                rig = stack.enter_context(running(tmp_path, caplog, pool_pull=api == "share"))
    print(summary(api, family, findings, time.monotonic() - started))
    assert not findings.by_kind, f"{len(findings.by_kind)} kinds of failure:\n{findings.report()}"
