"""The endpoints Ollama serves, what kind each is, and gin-style path matching."""

from __future__ import annotations

import dataclasses
import enum

# The node's own API for the tray, the dashboard, the CLI and peers; not part of Ollama's.
CONTROL_PREFIX = "/_inferhub/v1/"
STATUS_PATH = CONTROL_PREFIX + "status"
PEERS_PATH = CONTROL_PREFIX + "peers"
# GET the peers the owner named by address, and how reaching each goes.
ADDRESSES_PATH = CONTROL_PREFIX + "addresses"
# GET the switches of settings.SWITCHES, POST some of them to change them.
SWITCHES_PATH = CONTROL_PREFIX + "switches"
# GET ?model=NAME: where a request for the model would go now, and why.
ROUTE_PATH = CONTROL_PREFIX + "route"
# GET ?limit=N: the last N requests peers had this machine serve, newest last (see audit.py).
AUDIT_PATH = CONTROL_PREFIX + "audit"
# GET who uses this machine now, and what each peer had it serve today.
USAGE_PATH = CONTROL_PREFIX + "usage"
# GET the private pool this node is in and its members; POST to take up the pool files as they are now
# (the command line changes them: create, join, invite, remove, leave).
POOL_PATH = CONTROL_PREFIX + "pool"
# On the share API of a private pool: the authority admits machines here; members fetch the roster.
JOIN_PATH = CONTROL_PREFIX + "join"
ROSTER_PATH = CONTROL_PREFIX + "roster"
# On the share API: the models this machine lends, read as files (lending.py).
MODELS_PREFIX = CONTROL_PREFIX + "models/"
# Prometheus scrapes, on both APIs; Ollama has no such path.
METRICS_PATH = "/metrics"
# The one management call peers may make, where the owner allows it, and a pinned request may route.
PULL_PATH = "/api/pull"


class Kind(enum.Enum):
    """How the node treats a request; later the router and the share API decide by it."""

    ROOT = "root"  # answered by the node itself
    READ = "read"  # idempotent reads: version, listings, show
    INFERENCE = "inference"  # generate, chat, embeddings and their /v1 twins
    MANAGE = "manage"  # model management and account calls, for this machine only
    BLOB = "blob"  # blob uploads, streamed and never size-capped
    PASSTHROUGH = "passthrough"  # paths this version does not know, relayed as they are


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One route of Ollama's API."""

    pattern: str
    methods: frozenset[str]
    kind: Kind
    # The Go type Ollama decodes the body into, for endpoints whose `model` the node reads;
    # None when the body is forwarded unread.
    request_type: str | None = None

    @property
    def openai(self) -> bool:
        """Whether errors take the OpenAI shape rather than Ollama's."""
        return self.pattern.startswith("/v1/")


def _ep(pattern: str, methods: str, kind: Kind, request_type: str | None = None) -> Endpoint:
    return Endpoint(pattern, frozenset(methods.split()), kind, request_type)


ENDPOINTS: tuple[Endpoint, ...] = (
    _ep("/", "GET HEAD", Kind.ROOT),
    _ep("/api/version", "GET HEAD", Kind.READ),
    _ep("/api/status", "GET", Kind.READ),
    _ep("/api/tags", "GET HEAD", Kind.READ),
    _ep("/api/ps", "GET", Kind.READ),
    _ep("/api/show", "POST", Kind.READ, "api.ShowRequest"),
    _ep("/api/generate", "POST", Kind.INFERENCE, "api.GenerateRequest"),
    _ep("/api/chat", "POST", Kind.INFERENCE, "api.ChatRequest"),
    _ep("/api/embed", "POST", Kind.INFERENCE, "api.EmbedRequest"),
    _ep("/api/embeddings", "POST", Kind.INFERENCE, "api.EmbeddingRequest"),
    _ep("/api/pull", "POST", Kind.MANAGE),
    _ep("/api/push", "POST", Kind.MANAGE),
    _ep("/api/create", "POST", Kind.MANAGE),
    _ep("/api/copy", "POST", Kind.MANAGE),
    _ep("/api/delete", "DELETE", Kind.MANAGE),
    _ep("/api/blobs/:digest", "HEAD", Kind.MANAGE),
    _ep("/api/blobs/:digest", "POST", Kind.BLOB),
    _ep("/api/me", "POST", Kind.MANAGE),
    _ep("/api/signout", "POST", Kind.MANAGE),
    _ep("/api/user/keys/:encodedKey", "DELETE", Kind.MANAGE),
    _ep("/api/experimental/web_search", "POST", Kind.MANAGE),
    _ep("/api/experimental/web_fetch", "POST", Kind.MANAGE),
    _ep("/api/experimental/model-recommendations", "GET", Kind.READ),
    _ep("/v1/chat/completions", "POST", Kind.INFERENCE, "openai.ChatCompletionRequest"),
    _ep("/v1/completions", "POST", Kind.INFERENCE, "openai.CompletionRequest"),
    _ep("/v1/embeddings", "POST", Kind.INFERENCE, "openai.EmbedRequest"),
    _ep("/v1/responses", "POST", Kind.INFERENCE, "openai.ResponsesRequest"),
    _ep("/v1/messages", "POST", Kind.INFERENCE, "anthropic.MessagesRequest"),
    # Multipart form: the model is a form field, so the body is forwarded unread.
    _ep("/v1/audio/transcriptions", "POST", Kind.INFERENCE),
    _ep("/v1/models", "GET", Kind.READ),
    _ep("/v1/models/:model", "GET", Kind.READ),
)

# Newer Ollama versions add endpoints under these prefixes; they are relayed unchanged.
_PASSTHROUGH_PREFIXES = ("/api/", "/v1/")


@dataclasses.dataclass(frozen=True)
class Match:
    """The result of routing a method and path."""

    endpoint: Endpoint | None
    # True when the path exists for other methods only (gin answers 405 then).
    method_not_allowed: bool = False


def _compile() -> tuple[dict[str, tuple[Endpoint, ...]], tuple[tuple[str, Endpoint], ...]]:
    exact: dict[str, tuple[Endpoint, ...]] = {}
    param: list[tuple[str, Endpoint]] = []
    for ep in ENDPOINTS:
        head, colon, _ = ep.pattern.partition("/:")
        if colon:
            param.append((head + "/", ep))
        else:
            exact[ep.pattern] = (*exact.get(ep.pattern, ()), ep)
    return exact, tuple(param)


# Every request is matched, so the table is indexed once: exact paths by dict, and the few
# patterns with a trailing parameter (one non-empty segment) by prefix.
_EXACT, _PARAM = _compile()


def match(method: str, path: str) -> Match:
    """Find the endpoint for `method path` the way Ollama's router does."""
    candidates = _EXACT.get(path)
    if candidates is None:
        candidates = tuple(
            ep
            for prefix, ep in _PARAM
            if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix) :]
        )
    for ep in candidates:
        if method in ep.methods:
            return Match(ep)
    if candidates:
        return Match(None, method_not_allowed=True)
    if path.startswith(_PASSTHROUGH_PREFIXES):
        return Match(Endpoint(path, frozenset({method}), Kind.PASSTHROUGH))
    return Match(None)
