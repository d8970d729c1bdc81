"""TLS on the share API: each node's own certificate, pinned by its peers through its fingerprint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inferhub_desktop.core import BackendUnavailable, Node
from inferhub_desktop.core.backends.ollama import OllamaBackend
from inferhub_desktop.core.identity import load_identity
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings, private_pool


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize("private", [False, True])
async def test_peers_reach_a_tls_share_api_by_its_pinned_certificate(
    tmp_path: Path, http: aiohttp.ClientSession, private: bool
) -> None:
    if private:
        # A private pool's members show the certificates the pool's authority made them, always.
        private_pool(tmp_path / "a", tmp_path / "b")
    async with (
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as theirs,
        FakeOllama([]) as mine,
        Node(
            node_settings(tmp_path / "a", theirs.url, name="gpu-box", share=True, tls=not private),
            environ={},
        ) as box,
        Node(node_settings(tmp_path / "b", mine.url, name="desk"), environ={}) as desk,
    ):
        shown = box.pool.fingerprint if box.pool else load_identity(tmp_path / "a").fingerprint
        assert box.status().tls == shown
        await eventually(lambda: [p.announcement.name for p in desk.membership.peers] == ["gpu-box"])
        [peer] = desk.membership.peers
        assert peer.announcement.tls == box.tls_fingerprint

        body = {"model": "llama3", "prompt": "hi", "stream": False}
        async with http.post(desk.api_url + "/api/generate", json=body) as reply:
            assert (reply.status, reply.headers["X-InferHub-Node"]) == (200, "gpu-box")
        assert [r.path for r in theirs.requests if r.path == "/api/generate"] == ["/api/generate"]
        # Plain HTTP gets nothing from a TLS share API.
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://127.0.0.1:{box.share_port}/api/tags")


async def test_a_server_showing_another_certificate_is_not_trusted(tmp_path: Path) -> None:
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path / "a", fake.url, name="real", share=True, tls=True), environ={}) as real,
        Node(
            node_settings(tmp_path / "b", fake.url, name="impostor", share=True, tls=True), environ={}
        ) as fake_box,
    ):
        # The impostor's address, the real node's pin: what a man in the middle would offer.
        backend = OllamaBackend(
            f"https://127.0.0.1:{fake_box.share_port}",
            connect_timeout_s=2.0,
            name="peer 'real'",
            pin=real.tls_fingerprint,
        )
        try:
            with pytest.raises(BackendUnavailable, match="is not the one its record pins"):
                async with backend.request("GET", "/api/tags", {}, None):
                    pass
            trusting = OllamaBackend(
                f"https://127.0.0.1:{real.share_port}",
                connect_timeout_s=2.0,
                name="peer 'real'",
                pin=real.tls_fingerprint,
            )
            async with trusting.request("GET", "/api/version", {}, None) as reply:
                assert reply.status == 200
            trusting.close()
        finally:
            backend.close()
