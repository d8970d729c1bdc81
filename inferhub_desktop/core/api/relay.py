"""The request path the local and share APIs have in common, and the relaying of a backend's answer.

Both APIs word their failures as Ollama does, name the node in every response, stop request loops and
cap bodies. The dispatcher names the nodes a request may go to, best first; the request is sent to the
first, and to the next when one fails before its answer began (within a few attempts and a deadline),
and the answer is relayed with headers filtered and stream frames forwarded as they arrive. Each API
decides on its own which requests it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from aiohttp import HttpVersion11, StreamReader, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy

from ..backends.base import Backend, Body, UpstreamResponse
from ..events import RequestDone, RequestUnderway
from ..settings import SETTINGS_FILE, Settings
from ..speeds import Observation
from ..status import NodeStatus
from ..wire.endpoints import Endpoint, Kind, match
from ..wire.errors import ApiError, BackendUnavailable
from ..wire.framing import FrameSplitter, framing_of
from ..wire.headers import BATCH, NODE_HEADER, PRIORITY_HEADER, REQUEST_ID_HEADER, VIA_HEADER
from ..wire.payload import parse_body, string_field
from ..wire.responses import error_response, json_response, text_response
from .admission import Turn
from .meter import ReplyMeter

_log = logging.getLogger(__name__)

T = TypeVar("T")

# A request is tried on at most this many nodes, and on a further one only this soon after it came:
# a client that has waited longer has most likely given up.
MAX_ATTEMPTS = 3
FAILOVER_WINDOW_S = 120.0
# Answers that send a request on to the next node: the node is broken or busy, or (404) lacks a model
# the pool thought it had.
_FAIL_OVER_STATUSES = frozenset({404, 502, 503})

# The node's full state.
StatusSource = Callable[[], NodeStatus]
# Holds a request to `endpoint` while it is sent to the backend and its answer relayed; this is
# where an API counts requests against the backend's slots, or waits for one. A peer's request on this
# machine's backend holds a Turn, which the owner may cut.
Admit = Callable[[Endpoint], AbstractAsyncContextManager[Turn | None]]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one attempt at a node went."""

    # Why it failed (connection, broken stream, or an answer that sent the request on); None if answered.
    failure: str | None
    status: int = 0
    # What the answer showed of the node's speed, when it showed something.
    seen: Observation | None = None
    # The client left before the attempt ended: it says nothing about the node.
    cancelled: bool = False


@dataclasses.dataclass(frozen=True)
class Target:
    """A node a request may go to: its backend, how its slots are taken, who hears how it went."""

    name: str
    backend: Backend
    admit: Admit
    report: Callable[[Outcome], None]


@dataclasses.dataclass(frozen=True)
class Query:
    """What a planner decides by."""

    endpoint: Endpoint
    model: str | None
    fields: Mapping[str, Any] | None  # the parsed body, for endpoints whose body the node reads
    headers: Mapping[str, str]
    path: str
    # Who sent it: the member a private pool's TLS proved, else the address it came from.
    caller: str = ""

    @property
    def batch(self) -> bool:
        """Whether the request said it may wait behind interactive ones."""
        return self.headers.get(PRIORITY_HEADER, "").strip().lower() == BATCH


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a request goes: the nodes in the order to try them, or to all at once."""

    targets: Sequence[Target]
    # Send to every target and answer with the first good reply (an unload, for instance).
    broadcast: bool = False
    # Said to the client, as a 503, when there is no target.
    unavailable: str = "no node of the pool can serve this request"


class Dispatch(Protocol):
    """What the APIs hand the requests they relay to (core/dispatch.py's Dispatcher)."""

    def plan(self, query: Query, api: str) -> Plan:
        """Name the nodes a request to `api` ("local" or "share") may go to, best first."""
        ...

    def relayed(self, endpoint: Endpoint) -> None:
        """Hear that a request to `endpoint` was relayed."""
        ...

    def done(self, done: RequestDone) -> None:
        """Hear how an inference request ended."""
        ...


@dataclasses.dataclass
class _Trail:
    """What became of one request so far: where it went and how the last attempt ended."""

    started: float
    # When it arrived, in wall-clock seconds, as people read it.
    at: float = 0.0
    request_id: str = ""
    model: str | None = None
    client: str = ""
    address: str = ""
    verified: bool = False
    node: str = ""
    attempts: int = 0
    outcome: Outcome | None = None
    first_at: float | None = None
    # What an answer that was an error said.
    answer_error: str | None = None


_STARTED_KEY = web.RequestKey("response_started", bool)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# An id a client gives is kept when it is a plausible one: printable ASCII, no spaces, of a sane length.
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# A body the share API read already, within its deadline.
BODY_KEY = web.RequestKey("body", bytes)
# The member of a private pool whose certificate the request's TLS connection proved: who it is from,
# whatever else it claims.
CALLER_KEY = web.RequestKey("caller", str)

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Host is set from the backend's URL (Ollama rejects foreign ones); Origin was checked here, by the
# user's OLLAMA_ORIGINS, and must not be checked again by a backend that has its own; bodies travel
# uncompressed so stream frames can be seen; the body has been read already, so nothing is expected.
_NOT_SENT_UP = _HOP_BY_HOP | {
    "host",
    "content-length",
    "origin",
    "accept-encoding",
    "expect",
    NODE_HEADER.lower(),
}
# aiohttp writes its own framing and Date; CORS headers are the node's, not the backend's.
_NOT_SENT_DOWN = _HOP_BY_HOP | {"content-length", "date", "server", "vary"}


def request_id_of(given: str) -> str:
    """Return the client's request id where it gave a plausible one, else a new one."""
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def upstream_headers(request: web.BaseRequest, *, keep_length: bool) -> CIMultiDict[str]:
    """Copy the client's headers for the backend, less those that belong to this hop."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _NOT_SENT_UP)
    if keep_length and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    return headers


def _downstream_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k.lower() not in _NOT_SENT_DOWN and not k.lower().startswith("access-control-")
    )


async def relay(request: web.Request, upstream: UpstreamResponse, meter: ReplyMeter) -> web.StreamResponse:
    """Send the backend's answer to the client.

    Whole bodies are read first, so a broken backend still gets a clean 502. Streams go out frame
    by frame as they arrive, the status line with the first frame, as Ollama sends it; if the
    backend breaks after that, the client gets an error frame in the stream's own format.
    """
    headers = _downstream_headers(upstream.headers)
    framing = framing_of(upstream.headers.get("Content-Type", ""))
    if request.method == "HEAD":
        # No body, and the length the backend's GET would have: what Ollama's HEAD answers say.
        await upstream.read()
        if length := upstream.headers.get("Content-Length"):
            headers["Content-Length"] = length
        return web.Response(status=upstream.status, headers=headers)
    if framing is None:
        body = await upstream.read()
        meter.whole(body)
        return web.Response(status=upstream.status, body=body, headers=headers)

    response = web.StreamResponse(status=upstream.status, headers=headers)
    splitter = FrameSplitter(framing)
    try:
        async for chunk in upstream.iter_chunks():
            if frames := splitter.feed(chunk):
                if not response.prepared:
                    await response.prepare(request)
                await response.write(frames)
                meter.frames(frames)
    except BackendUnavailable as exc:
        if not response.prepared:
            raise  # nothing reached the client yet: it gets a clean 502, or the next node
        meter.broken = str(exc)
        await response.write(framing.error_frame(str(exc)))
    else:
        if not response.prepared:
            await response.prepare(request)
        if splitter.pending:
            # The backend ended without a final delimiter: pass its last bytes on as they are.
            await response.write(splitter.pending)
    await response.write_eof()
    return response


class _Cuttable:
    """A peer's reply that ends, as a broken one does, when its turn is cut: the client reads why in the
    stream's own error format (or gets a 502 it fails over on), and the backend sees its client leave."""

    def __init__(self, upstream: UpstreamResponse, cut: asyncio.Future[str]) -> None:
        self._upstream = upstream
        self._cut = cut

    @property
    def status(self) -> int:
        return self._upstream.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._upstream.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._upstream.iter_chunks())
        while True:
            try:
                chunk = await self._unless_cut(anext(chunks))
            except StopAsyncIteration:
                return
            yield chunk

    async def read(self) -> bytes:
        return await self._unless_cut(self._upstream.read())

    async def _unless_cut(self, step: Awaitable[T]) -> T:
        cut = self._cut
        if cut.cancelled():  # the turn ended: nothing can cut it now
            return await step
        task = asyncio.ensure_future(step)
        try:
            if not cut.done():
                await asyncio.wait((task, cut), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise BackendUnavailable(cut.result())
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def fetch(
    target: Target,
    endpoint: Endpoint,
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: Body,
    *,
    timeout_s: float | None = None,
    only_ok: bool = False,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """Send a request to a target and read its whole answer, telling the target how it went.

    No answer within `timeout_s`, or (with `only_ok`) an answer other than 200, fails as an unreachable
    node does, with BackendUnavailable.
    """
    outcome = Outcome(None, cancelled=True)
    try:
        async with (
            asyncio.timeout(timeout_s),
            target.admit(endpoint),
            target.backend.request(method, path_qs, headers, body) as upstream,
        ):
            status, reply_headers, reply = upstream.status, upstream.headers, await upstream.read()
        if only_ok and status != 200:
            outcome = Outcome(f"{target.name} answered HTTP {status}", status)
            raise BackendUnavailable(f"{target.name} answered HTTP {status}")
        outcome = Outcome(None, status)
        return status, reply_headers, reply
    except TimeoutError:
        outcome = Outcome(f"{target.name} did not answer within {timeout_s:g} s")
        raise BackendUnavailable(f"{target.name} did not answer within {timeout_s:g} s") from None
    except BackendUnavailable as exc:
        if outcome.cancelled:
            outcome = Outcome(str(exc))
        raise
    finally:
        target.report(outcome)


def endpoint_of(request: web.BaseRequest) -> Endpoint | web.Response:
    """Find the request's endpoint, or answer unknown paths, other methods and `/` as Ollama does."""
    found = match(request.method, request.path)
    if found.endpoint is None:
        if found.method_not_allowed:
            return text_response(405, "405 method not allowed")
        return text_response(404, "404 page not found")
    if found.endpoint.kind is Kind.ROOT:
        return text_response(200, "Ollama is running")
    return found.endpoint


@web.middleware
async def _http1_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a request line of HTTP/2 or later with 505, in HTTP/1.1, as Go's server (Ollama's) does."""
    version = request.version
    if version.major < 2:
        return await handler(request)
    # aiohttp writes its status line in the request's version, which no client of this port could read;
    # the version is a cached property of the request (tests/fuzz/test_apis.py sends such requests).
    request._cache["version"] = HttpVersion11
    response = error_response(
        505,
        f"unsupported protocol version HTTP/{version.major}.{version.minor}: this port speaks HTTP/1.1",
        openai=request.path.startswith("/v1/"),
    )
    response.force_close()
    return response


class Forwarder:
    """The part of answering a request that both APIs share, from the error shapes to the relay."""

    def __init__(
        self,
        settings: Settings,
        dispatch: Dispatch,
        api: str,
        *,
        status: StatusSource,
        metrics: Callable[[], tuple[bytes, str]],
    ) -> None:
        self._settings = settings
        self._dispatch = dispatch
        # Which API this is: "local" or "share".
        self._api = api
        self._status = status
        self._metrics = metrics
        self._node_header = quote(settings.name, safe=" !#$&'()*+,/:;=?@[]~")
        # Streamed replies being relayed now.
        self.streams = 0
        # The inference requests being answered now, oldest first.
        self._underway: dict[int, _Trail] = {}

    @property
    def name(self) -> str:
        """The name of the node this is part of."""
        return self._settings.name

    def app(self, handler: Handler) -> web.Application:
        """Build an application that sends every path to `handler`, its failures in Ollama's shapes."""
        app = web.Application(handler_args={"max_field_size": 65536}, middlewares=[_http1_only, self._errors])
        app.router.add_route("*", "/{path:.*}", handler, expect_handler=self._expect)
        app.on_response_prepare.append(self._on_prepare)
        return app

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        request[_STARTED_KEY] = True
        # A peer's answer names the peer; the rest name this node.
        response.headers.setdefault(NODE_HEADER, self._node_header)
        if request_id := request.get(REQUEST_ID_KEY):
            response.headers[REQUEST_ID_HEADER] = request_id

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn failures into Ollama-format errors: the /v1 paths in OpenAI's shape, never a traceback."""
        openai = request.path.startswith("/v1/")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, openai=openai)
        except BackendUnavailable as exc:
            return error_response(502, str(exc), openai=openai)
        except web.HTTPException as exc:
            # aiohttp's own refusals (a CONNECT, whose path is no path), worded as gin words them.
            text = {404: "404 page not found", 405: "405 method not allowed"}.get(exc.status)
            return text_response(exc.status, text or f"{exc.status} {exc.reason.lower()}")
        except Exception:
            if request.get(_STARTED_KEY):
                raise  # the status line is out; aiohttp drops the connection
            # Never a traceback to the client: the log has it.
            _log.exception("internal error answering %s %s", request.method, request.path)
            return error_response(500, "internal error in the InferHub node; see its log", openai=openai)

    def status_reply(self, request: web.BaseRequest) -> web.Response:
        """Answer a request for the node's status: its state as JSON to GET and HEAD."""
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "405 method not allowed")
        status = self._status()
        tag = f'"{status.tag(time.monotonic())}"'
        # A peer that has this status already is told so, in a few bytes.
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        reply = json_response(status.to_json())
        reply.headers["ETag"] = tag
        return reply

    def metrics_reply(self, request: web.BaseRequest) -> web.Response:
        """Answer a Prometheus scrape: the node's metrics to GET and HEAD."""
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "405 method not allowed")
        body, content_type = self._metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def forward(self, request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
        """Send the request where the dispatcher says and relay the answer; tell it how an inference
        request ended."""
        via = [v.strip() for v in request.headers.get(VIA_HEADER, "").split(",") if v.strip()]
        request_id = request[REQUEST_ID_KEY] = request_id_of(request.headers.get(REQUEST_ID_HEADER, ""))
        if endpoint.kind is not Kind.INFERENCE:
            return await self._forward(request, endpoint, via, _Trail(0.0, request_id=request_id))
        caller = request.get(CALLER_KEY)
        trail = _Trail(
            time.monotonic(),
            at=time.time(),
            request_id=request_id,
            client=caller or (via[-1] if via else ""),
            address=request.remote or "",
            verified=caller is not None,
        )
        error: str | None = None
        status = 0
        self._underway[id(trail)] = trail
        try:
            response = await self._forward(request, endpoint, via, trail)
            status = response.status
            return response
        except ApiError as exc:
            status, error = exc.status, exc.message
            raise
        except BackendUnavailable as exc:
            status, error = 502, str(exc)
            raise
        finally:
            del self._underway[id(trail)]
            if trail.attempts or error is not None or status:
                done = self._request_done(endpoint, trail, status, error)
                _log.info(
                    "request %s %s %s%s: %s in %.2f s",
                    done.request_id,
                    done.endpoint,
                    done.model or "-",
                    f" for {done.client}" if done.client else "",
                    f"{done.node or 'no node'} {done.status}" + (f" ({done.error})" if done.error else ""),
                    done.duration_s,
                )
                self._dispatch.done(done)

    def underway(self) -> list[RequestUnderway]:
        """Return the inference requests being answered now, oldest first."""
        return [
            RequestUnderway(t.request_id, t.at, self._api, t.model, t.node, t.client)
            for t in self._underway.values()
        ]

    def _request_done(self, endpoint: Endpoint, trail: _Trail, status: int, error: str | None) -> RequestDone:
        outcome = trail.outcome
        seen = outcome.seen if outcome else None
        tokens = seen.eval_count if seen else None
        rate = tokens / seen.eval_s if seen and tokens and seen.eval_s else None
        return RequestDone(
            at=time.time(),
            api=self._api,
            endpoint=endpoint.pattern,
            model=trail.model,
            node=trail.node,
            client=trail.client,
            address=trail.address,
            verified=trail.verified,
            attempts=trail.attempts,
            status=status or (outcome.status if outcome else 0),
            duration_s=time.monotonic() - trail.started,
            first_byte_s=trail.first_at - trail.started if trail.first_at is not None else None,
            tokens=tokens,
            tokens_per_s=rate,
            error=error or trail.answer_error or (outcome.failure if outcome else None),
            # Neither an answer nor an error: the client left first.
            cancelled=error is None and not status and (outcome is None or outcome.cancelled),
            request_id=trail.request_id,
        )

    async def _forward(
        self, request: web.Request, endpoint: Endpoint, via: list[str], trail: _Trail
    ) -> web.StreamResponse:
        if self._settings.node_id in via:
            raise ApiError(
                508,
                f"request loop: the backend {self._settings.backend} leads back to this InferHub node; "
                "point --backend at Ollama itself (default http://127.0.0.1:11434)",
            )
        body = await self._body(request, endpoint)
        fields = model = None
        if endpoint.request_type is not None and isinstance(body, bytes):
            fields = parse_body(body, endpoint.request_type, openai=endpoint.openai)
            model = string_field(fields, "model", endpoint.request_type)
        trail.model = model
        # The body is read and checked first: a request that would fail anyway is not sent anywhere.
        caller = request.get(CALLER_KEY) or request.remote or ""
        query = Query(endpoint, model, fields, request.headers, request.path, caller)
        plan = self._dispatch.plan(query, self._api)
        if not plan.targets:
            raise ApiError(503, plan.unavailable)

        headers = upstream_headers(request, keep_length=isinstance(body, StreamReader))
        headers[VIA_HEADER] = ",".join([*via, self._settings.node_id])
        # The peer, and the backend, log the request under the id this node answers with.
        headers[REQUEST_ID_HEADER] = trail.request_id
        response: web.StreamResponse
        if plan.broadcast:
            response = await self._broadcast(request, endpoint, plan.targets, headers, body)
        else:
            response = await self._attempt(request, endpoint, plan.targets, headers, body, trail)
        self._dispatch.relayed(endpoint)
        return response

    async def _attempt(
        self,
        request: web.Request,
        endpoint: Endpoint,
        targets: Sequence[Target],
        headers: Mapping[str, str],
        body: Body,
        trail: _Trail,
    ) -> web.StreamResponse:
        """Try the targets in turn until one answers, and relay that answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER_WINDOW_S
        # A streamed body (a blob upload) cannot be sent twice.
        tries = targets[:1] if isinstance(body, StreamReader) else targets[:MAX_ATTEMPTS]
        failures: list[str] = []
        for index, target in enumerate(tries):
            last = index == len(tries) - 1 or loop.time() > deadline
            try:
                return await self._try(request, endpoint, target, headers, body, trail, fail_over=not last)
            except BackendUnavailable as exc:
                failures.append(str(exc))
                if last:
                    if len(failures) == 1:
                        raise
                    raise BackendUnavailable(
                        f"no node could answer after {len(failures)} attempts: " + "; ".join(failures)
                    ) from exc
        raise AssertionError("the last attempt returns or raises")

    async def _try(
        self,
        request: web.Request,
        endpoint: Endpoint,
        target: Target,
        headers: Mapping[str, str],
        body: Body,
        trail: _Trail,
        *,
        fail_over: bool,
    ) -> web.StreamResponse:
        """Send the request to one target and relay its answer; raise BackendUnavailable to try the next.

        An answer that says the node is broken or busy, or lacks the model, is not relayed while
        `fail_over` allows another node.
        """
        meter = ReplyMeter(endpoint)
        outcome = Outcome(None, cancelled=True)
        trail.node, trail.attempts = target.name, trail.attempts + 1
        turn: Turn | None = None
        try:
            async with (
                target.admit(endpoint) as turn,
                target.backend.request(request.method, request.raw_path, headers, body) as reply,
            ):
                upstream: UpstreamResponse = reply
                if turn is not None:
                    turn.replying = True
                    upstream = _Cuttable(reply, turn.cut)
                if fail_over and upstream.status in _FAIL_OVER_STATUSES:
                    with contextlib.suppress(BackendUnavailable):
                        await upstream.read()
                    outcome = Outcome(f"{target.name} answered HTTP {upstream.status}", upstream.status)
                    raise BackendUnavailable(outcome.failure or "")
                streamed = framing_of(upstream.headers.get("Content-Type", "")) is not None
                self.streams += streamed
                try:
                    response = await relay(request, upstream, meter)
                finally:
                    self.streams -= streamed
                if upstream.status >= 400:
                    trail.answer_error = meter.error() or f"HTTP {upstream.status}"
                failure = meter.broken or meter.failed_in_stream()
                outcome = Outcome(failure, upstream.status, None if failure else meter.observation())
                if turn is not None and outcome.seen is not None:
                    turn.tokens = outcome.seen.eval_count
                return response
        except asyncio.CancelledError:
            # Cut before the backend answered (admission.py): the peer hears why, and sends it elsewhere.
            task = asyncio.current_task()
            reason = turn.cut_reason if turn is not None else None
            if reason is None or task is None or task.uncancel() > 0:
                raise
            outcome = Outcome(reason, 503)
            raise ApiError(503, reason) from None
        except BackendUnavailable as exc:
            if outcome.cancelled:
                outcome = Outcome(str(exc))
            raise
        finally:
            trail.outcome, trail.first_at = outcome, meter.first_at
            # A cut says nothing of the node: its breaker and speeds do not hear of it.
            cut = turn is not None and turn.cut_reason is not None
            target.report(dataclasses.replace(outcome, cancelled=True) if cut else outcome)

    async def _broadcast(
        self,
        request: web.Request,
        endpoint: Endpoint,
        targets: Sequence[Target],
        headers: Mapping[str, str],
        body: Body,
    ) -> web.Response:
        """Send the request to every target at once; answer with the first target's good reply."""
        results = await asyncio.gather(
            *(fetch(t, endpoint, request.method, request.raw_path, headers, body) for t in targets),
            return_exceptions=True,
        )
        replies = [r for r in results if not isinstance(r, BaseException)]
        if not replies:
            error = results[0]
            raise error if isinstance(error, BackendUnavailable) else BackendUnavailable(str(error))
        status, upstream_headers_, reply = next((r for r in replies if r[0] == 200), replies[0])
        return web.Response(status=status, body=reply, headers=_downstream_headers(upstream_headers_))

    async def _body(self, request: web.Request, endpoint: Endpoint) -> Body:
        """Read the body within the size limit; blob uploads stream through unread and unlimited."""
        if BODY_KEY in request:
            return request[BODY_KEY]
        if not request.body_exists:
            return None
        if endpoint.kind is Kind.BLOB:
            return request.content
        return await self.read_body(request)

    async def read_body(self, request: web.Request) -> bytes:
        """Read the whole body within the size limit."""
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    async def _expect(self, request: web.Request) -> web.Response | None:
        """Answer `Expect: 100-continue` as the body's size deserves: on the local API, a body over the limit,
        known from its Content-Length, is refused before the client sends it, rather than after. Blob
        uploads have no limit; the share API refuses in its own order (membership first)."""
        limit = self._settings.max_body_bytes
        found = match(request.method, request.path).endpoint
        limited = self._api == "local" and not (found is not None and found.kind is Kind.BLOB)
        if limited and request.content_length is not None and request.content_length > limit:
            exc = self._too_large()
            response = error_response(exc.status, exc.message, openai=request.path.startswith("/v1/"))
            response.force_close()  # the client may send the body anyway; it is not read
            return response
        if request.version == HttpVersion11:
            if request.headers.get("Expect", "").lower() != "100-continue":
                raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer's own bytes are counted from here
        return None

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"request body is larger than the {self._settings.max_body_mib} MiB limit; raise it with "
            f"--max-body-mib or max_body_mib in {self._settings.config_dir / SETTINGS_FILE}",
        )
