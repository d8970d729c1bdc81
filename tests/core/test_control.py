"""The local API's control paths are the owner's: they need the control token from a file only the owner
reads, refuse web pages, and never hand out the pool's secret."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inferhub_desktop.core import (
    ADDRESSES_PATH,
    AUDIT_PATH,
    CONTROL_HEADER,
    PEERS_PATH,
    POOL_PATH,
    ROUTE_PATH,
    STATUS_PATH,
    SWITCHES_PATH,
    TOKEN_FILE,
    Node,
    create_pool,
)
from tests.fakes.ollama import FakeOllama
from tests.support import (
    control,
    node_settings,
    start_fake_ollama_process,
    start_node_process,
    stop_process,
)

CONTROL_PATHS = [
    STATUS_PATH,
    PEERS_PATH,
    ADDRESSES_PATH,
    SWITCHES_PATH,
    POOL_PATH,
    ROUTE_PATH + "?model=x",
    AUDIT_PATH,
]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with FakeOllama() as fake, Node(node_settings(tmp_path, fake.url), environ={}) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def test_the_token_is_the_owners_alone(node: Node) -> None:
    path = node.settings.config_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == node.control_token
    assert len(node.control_token) >= 40


@pytest.mark.parametrize("path", CONTROL_PATHS)
@pytest.mark.parametrize("token", [None, "", "wrong"], ids=["none", "empty", "wrong"])
async def test_a_control_path_without_the_token_is_refused(
    node: Node, http: aiohttp.ClientSession, path: str, token: str | None
) -> None:
    headers = {} if token is None else {CONTROL_HEADER: token}
    async with http.get(node.api_url + path, headers=headers) as reply:
        assert reply.status == 401
        assert "control token" in (await reply.json())["error"]
    async with http.post(node.api_url + SWITCHES_PATH, json={"share": True}, headers=headers) as reply:
        assert reply.status == 401
    assert node.settings.share is False


@pytest.mark.parametrize("origin", ["http://localhost:8080", "vscode-webview://an-extension", "null"])
async def test_a_web_page_gets_no_control_path_even_with_the_token(
    node: Node, http: aiohttp.ClientSession, origin: str
) -> None:
    headers = {**control(node), "Origin": origin}
    async with http.post(node.api_url + SWITCHES_PATH, json={"share": True}, headers=headers) as reply:
        assert reply.status == 403
    async with http.get(node.api_url + POOL_PATH, headers=headers) as reply:
        assert reply.status == 403
    assert node.settings.share is False
    # Ollama's own endpoints keep Ollama's rules for the same page.
    async with http.get(node.api_url + "/api/version", headers={"Origin": "http://localhost:8080"}) as reply:
        assert reply.status in (200, 502)


async def test_an_invite_code_is_never_served(node: Node, http: aiohttp.ClientSession) -> None:
    assert node.identity is not None
    code = create_pool(node.settings.config_dir, node.identity, "box").invite()
    async with http.post(node.api_url + POOL_PATH, json={}, headers=control(node)) as reply:
        joined = await reply.text()
        assert reply.status == 200
    async with http.get(node.api_url + POOL_PATH, headers=control(node)) as reply:
        shown = await reply.text()
    async with http.get(node.api_url + STATUS_PATH, headers=control(node)) as reply:
        status = await reply.text()
    secret = code.replace("-", "")
    for text in (joined, shown, status):
        assert secret not in text.replace("-", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")
def test_another_os_user_cannot_control_the_node(tmp_path: Path) -> None:
    """As a second user of the machine would, with the shell's own tools: the token file is unreadable, and
    the API refuses a request without it."""
    config_dir = tmp_path / "config"
    fake, backend = start_fake_ollama_process()
    node, url = start_node_process(config_dir, backend)
    port = url.rsplit(":", 1)[1]
    # The folders may be listed by others; the token file stays the owner's.
    for folder in (tmp_path, config_dir):
        folder.chmod(0o755)
    as_nobody = {"user": 65534, "group": 65534, "capture_output": True, "text": True, "timeout": 30}
    body = '{"share": true}'
    http = (
        f"exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'POST {SWITCHES_PATH} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
        f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n{body}' >&3; cat <&3"
    )
    try:
        read = subprocess.run(["cat", str(config_dir / TOKEN_FILE)], **as_nobody)
        sent = subprocess.run(["bash", "-c", http], **as_nobody)
    finally:
        stop_process(node)
        stop_process(fake)
    assert read.returncode != 0
    assert "Permission denied" in read.stderr
    assert sent.stdout.startswith("HTTP/1.1 401"), sent.stdout
    assert "control token" in sent.stdout
