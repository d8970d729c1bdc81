"""Ollama's Host and Origin rules, so a web page cannot drive the local API."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Mapping

import psutil

# gin-contrib/cors as Ollama configures it.
_ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
_ALLOW_HEADERS = ",".join(
    [
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        "Openai-Beta",
        # InferHub's own: a page may pin a node, mark its work as batch, and follow a request by its id.
        "X-InferHub-Node",
        "X-InferHub-Priority",
        "X-Request-Id",
        "Traceparent",
        *(
            "X-Stainless-" + h
            for h in [
                "Arch",
                "Async",
                "Custom-Poll-Interval",
                "Helper-Method",
                "Lang",
                "Os",
                "Package-Version",
                "Poll-Helper",
                "Retry-Count",
                "Runtime",
                "Runtime-Version",
                "Timeout",
            ]
        ),
    ]
)
_MAX_AGE_S = 12 * 3600
# What a page may read of an answer beyond the CORS-safelisted headers: which node answered, and the id.
_EXPOSE_HEADERS = "X-InferHub-Node, X-Request-Id"


class OriginPolicy:
    """The origins Ollama accepts: OLLAMA_ORIGINS plus local pages and app schemes."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        configured = environ.get("OLLAMA_ORIGINS", "").strip("\"'")
        patterns = [o.strip().lower() for o in configured.split(",") if o.strip()]
        for host in ("localhost", "127.0.0.1", "0.0.0.0"):
            patterns += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
        patterns += ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
        self._allow_all = "*" in patterns
        self._exact = {p for p in patterns if "*" not in p}
        # gin-contrib/cors splits a wildcard origin at its one '*' into a prefix and a suffix.
        self._wildcards = [tuple(p.split("*", 1)) for p in patterns if "*" in p and p != "*"]

    def allows(self, origin: str) -> bool:
        if self._allow_all or origin in self._exact:
            return True
        return any(
            origin.startswith(prefix) and origin.endswith(suffix) and len(origin) >= len(prefix) + len(suffix)
            for prefix, suffix in self._wildcards
        )

    def preflight_headers(self, origin: str) -> dict[str, str]:
        return {
            **self.response_headers(origin),
            "Access-Control-Allow-Methods": _ALLOW_METHODS,
            "Access-Control-Allow-Headers": _ALLOW_HEADERS,
            "Access-Control-Max-Age": str(_MAX_AGE_S),
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }

    def response_headers(self, origin: str) -> dict[str, str]:
        if self._allow_all:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": _EXPOSE_HEADERS}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": _EXPOSE_HEADERS,
            "Vary": "Origin",
        }


def is_cors_request(origin: str | None, host: str) -> bool:
    """Whether the Origin makes this a cross-origin request (same-origin fetches send one too)."""
    return bool(origin) and origin not in (f"http://{host}", f"https://{host}")


def split_host(host_header: str) -> str:
    """Strip the port from a Host header as Go's net.SplitHostPort would."""
    if host_header.startswith("["):
        end = host_header.find("]")
        if end != -1 and host_header[end + 1 :].startswith(":"):
            return host_header[1:end]
        return host_header
    if host_header.count(":") == 1:
        return host_header.split(":", 1)[0]
    return host_header


def host_allowed(host_header: str) -> bool:
    """Apply Ollama's check of the Host header for a server bound to loopback (DNS rebinding)."""
    host = split_host(host_header)
    return _local_by_address_or_name(host) or _is_local_ip(host)


@functools.lru_cache(maxsize=256)
def _local_by_address_or_name(host: str) -> bool:
    """Classify a host by what it says alone; cached, since clients send the same few Hosts."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _host_name_allowed(host)
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def host_name_allowed(host_header: str) -> bool:
    """Whether the Host is a local name rather than an address (Ollama ends OPTIONS for those with 204)."""
    return _host_name_allowed(split_host(host_header))


def _host_name_allowed(host: str) -> bool:
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _is_local_ip(host: str) -> bool:
    """Whether `host` is an address of one of this machine's interfaces (they change, so never cached)."""
    try:
        text = str(ipaddress.ip_address(host))
    except ValueError:
        return False
    return any(
        addr.address.split("%", 1)[0] == text for addrs in psutil.net_if_addrs().values() for addr in addrs
    )
