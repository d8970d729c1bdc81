"""Each switch and setting a running node takes stays where the user last put it: in the node, in
settings.toml and after a restart; one that cannot be saved is refused, and nothing changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferhub_desktop.core import (
    POOL_PATH,
    STATUS_PATH,
    SWITCHES_PATH,
    Node,
    SettingsStore,
    create_pool,
    leave_pool,
    read_settings_file,
)
from inferhub_desktop.core.settings import SETTINGS_FILE
from tests.fakes.ollama import FakeOllama
from tests.support import control, node_settings, unwritable

SWITCHES_OFF = {"share": False, "local_only": False, "pool_pull": False}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(["llama3:latest"]) as server:
        yield server


async def ask(node: Node, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, node.api_url + path, json=body, headers=control(node)) as reply,
    ):
        return reply.status, await reply.json()


async def restarted(config_dir: Path, fake: FakeOllama) -> dict[str, Any]:
    """Start a node anew from the same config directory, with no flags, and return its status."""
    async with Node(
        SettingsStore(config_dir, {"api_port": 0, "share_port": 0, "backend": fake.url}, {})
    ) as node:
        return (await ask(node, "GET", STATUS_PATH))[1]  # type: ignore[no-any-return]


async def test_switches_from_the_control_api_hold_in_the_node_the_file_and_after_a_restart(
    tmp_path: Path, fake: FakeOllama
) -> None:
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        assert await ask(node, "GET", SWITCHES_PATH) == (200, SWITCHES_OFF)
        wanted = {"share": True, "local_only": True, "pool_pull": True}
        assert await ask(node, "POST", SWITCHES_PATH, wanted) == (200, wanted)
        assert await ask(node, "POST", SWITCHES_PATH, {"local_only": False}) == (
            200,
            {**wanted, "local_only": False},
        )
        status = (await ask(node, "GET", STATUS_PATH))[1]
        # Whatever reads the node's state reads the same switches.
        assert (status["share"], status["local_only"], status["pool_pull"]) == (True, False, True)
        assert node.announcement().share is True

    table = read_settings_file(tmp_path)
    assert (table["share"], table["local_only"], table["pool_pull"]) == (True, False, True)
    status = await restarted(tmp_path, fake)
    assert (status["share"], status["local_only"], status["pool_pull"]) == (True, False, True)


async def test_a_flag_given_at_start_yields_to_the_users_later_switch(
    tmp_path: Path, fake: FakeOllama
) -> None:
    # As `inferhub serve --share` then `inferhub share off`: the last word is the user's.
    async with Node(node_settings(tmp_path, fake.url, share=True), environ={}) as node:
        assert (await ask(node, "GET", SWITCHES_PATH))[1]["share"] is True
        await ask(node, "POST", SWITCHES_PATH, {"share": False})
        assert node.settings.share is False
    assert (await restarted(tmp_path, fake))["share"] is False


async def test_making_and_leaving_a_pool_holds_after_a_restart(tmp_path: Path, fake: FakeOllama) -> None:
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        assert node.identity is not None
        made = create_pool(tmp_path, node.identity, "box")
        status, pool = await ask(node, "POST", POOL_PATH, {})
        assert (status, pool["pool"], pool["authority"]) == (200, made.pool_id, True)
        assert [m["name"] for m in pool["members"]] == ["box"]
        assert node.announcement().pool == made.pool_id
        node_id = node.settings.node_id
    again = await restarted(tmp_path, fake)
    assert (again["pool"], again["id"]) == (made.pool_id, node_id)
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        leave_pool(tmp_path)
        assert await ask(node, "POST", POOL_PATH, {}) == (200, {"pool": None, "nearby": []})
    assert (await restarted(tmp_path, fake))["pool"] is None


async def test_peers_by_address_hold_after_a_restart(tmp_path: Path, fake: FakeOllama) -> None:
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        node.store.change(peers=["10.0.0.7:11436"])
        assert node.settings.peers == ("10.0.0.7:11436",)
    store = SettingsStore(tmp_path, environ={})
    assert store.settings.peers == ("10.0.0.7:11436",)


@pytest.mark.parametrize("how", ["read-only", "full"])
async def test_a_switch_that_cannot_be_saved_is_refused_and_the_node_keeps_the_old_one(
    tmp_path: Path, fake: FakeOllama, how: str
) -> None:
    config_dir = tmp_path / "config"
    async with Node(node_settings(config_dir, fake.url), environ={}) as node:
        await ask(node, "POST", SWITCHES_PATH, {"share": True})
        with unwritable(config_dir, how):
            saved = (config_dir / SETTINGS_FILE).read_bytes()
            status, answer = await ask(node, "POST", SWITCHES_PATH, {"share": False})
            assert status == 500
            assert str(config_dir / SETTINGS_FILE) in answer["error"]
            assert "nothing was changed" in answer["error"]
            assert (config_dir / SETTINGS_FILE).read_bytes() == saved

            assert (await ask(node, "GET", SWITCHES_PATH))[1]["share"] is True
            assert node.announcement().share is True
    assert (await restarted(config_dir, fake))["share"] is True
