"""The fake Ollama with a models directory keeps its models as files in Ollama's layout, and pulls,
copies and deletes them as Ollama does (server/images.go, server/download.go, manifest/)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.ollama import FakeModel, FakeOllama
from tests.fakes.registry import FakeRegistry

MIB = 1 << 20
BIG = FakeModel("big:latest", size=3 * MIB + 17, family="qwen2", parameter_size="135M")


def tree(root: Path) -> dict[str, str]:
    """Every file under a models directory, by path, with its sha256."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def pull(fake: FakeOllama, model: str, **options: Any) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.url + "/api/pull", json={"model": model, **options}) as reply,
    ):
        assert reply.status == 200
        return [json.loads(line) async for line in reply.content]


async def tags(fake: FakeOllama) -> dict[str, str]:
    async with aiohttp.ClientSession() as http, http.get(fake.url + "/api/tags") as reply:
        return {m["name"]: m["digest"] for m in (await reply.json())["models"]}


async def test_models_are_files_in_ollamas_layout_and_list_by_their_manifests_digest(tmp_path: Path) -> None:
    async with (
        FakeOllama([BIG], models_dir=tmp_path / "a") as a,
        FakeOllama([BIG], models_dir=tmp_path / "b"),
    ):
        manifest = tmp_path / "a" / "manifests" / "registry.ollama.ai" / "library" / "big" / "latest"
        layers = json.loads(manifest.read_bytes())
        assert layers["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert [layer["mediaType"].rsplit(".", 1)[-1] for layer in layers["layers"]] == [
            "model",
            "template",
            "params",
            "license",
        ]
        assert layers["layers"][0]["size"] == BIG.size
        assert (await tags(a)) == {"big:latest": hashlib.sha256(manifest.read_bytes()).hexdigest()}
        # The same model seeded twice is the same files.
        assert tree(tmp_path / "a") == tree(tmp_path / "b")


async def test_a_pull_from_a_registry_writes_the_same_files_and_copy_and_delete_keep_them_right(
    tmp_path: Path,
) -> None:
    async with (
        FakeOllama([BIG], models_dir=tmp_path / "source"),
        FakeOllama([FakeModel("other:latest", size=MIB)], models_dir=tmp_path / "here") as here,
    ):
        registry = FakeRegistry(tmp_path / "source", registry_host="registry.ollama.ai")
        async with registry:
            host = registry.url.removeprefix("http://")
            lines = await pull(here, f"{host}/library/big:latest", insecure=True)
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        weights = [line for line in lines if line.get("total") == BIG.size]
        assert weights[-1]["completed"] == BIG.size
        assert weights[0]["status"] == f"pulling {weights[0]['digest'][7:19]}"
        source = tree(tmp_path / "source")
        pulled = tree(tmp_path / "here")
        blobs = {path: digest for path, digest in source.items() if path.startswith("blobs/")}
        assert blobs.items() <= pulled.items()
        # Every blob is the file its name says it is.
        assert all(path == f"blobs/sha256-{digest}" for path, digest in blobs.items())
        temporary = f"{host}/library/big:latest"
        listed = await tags(here)
        assert listed[temporary] == (await tags_of(tmp_path / "source"))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                here.url + "/api/copy", json={"source": temporary, "destination": "big"}
            ) as r:
                assert (r.status, await r.read()) == (200, b"")
            async with http.delete(here.url + "/api/delete", json={"model": temporary}) as r:
                assert r.status == 200
            # The copy names the same blobs: none went.
            assert blobs.items() <= tree(tmp_path / "here").items()
            assert (await tags(here))["big:latest"] == listed[temporary]
            async with http.delete(here.url + "/api/delete", json={"model": "big"}) as r:
                assert r.status == 200
        # Those no manifest names now went; those the other model names too (its template, its
        # licence) stayed.
        other = json.loads((tmp_path / "here/manifests/registry.ollama.ai/library/other/latest").read_bytes())
        shared = {
            f"blobs/{layer['digest'].replace(':', '-')}" for layer in [other["config"], *other["layers"]]
        }
        left = tree(tmp_path / "here")
        assert {path for path in blobs if path in left} == shared & blobs.keys()
        assert len(shared & blobs.keys()) < len(blobs)
        assert "other:latest" in await tags(here)


async def tags_of(root: Path) -> str:
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "big" / "latest"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


async def test_a_blob_whose_bytes_do_not_match_is_removed_and_the_pull_fails_as_ollamas(
    tmp_path: Path,
) -> None:
    async with (
        FakeOllama([BIG], models_dir=tmp_path / "source"),
        FakeOllama([], models_dir=tmp_path / "here") as here,
    ):
        registry = FakeRegistry(tmp_path / "source", registry_host="registry.ollama.ai")
        manifest = json.loads(
            (tmp_path / "source/manifests/registry.ollama.ai/library/big/latest").read_bytes()
        )
        weights = manifest["layers"][0]["digest"]
        registry.corrupt.add(weights)
        async with registry:
            lines = await pull(
                here, f"{registry.url.removeprefix('http://')}/library/big:latest", insecure=True
            )
        assert lines[-1]["error"].startswith(
            f"digest mismatch, file must be downloaded again: want {weights}, got "
        )
        assert not (tmp_path / "here" / "blobs" / weights.replace(":", "-")).exists()
        assert await tags(here) == {}


async def test_a_part_cut_midway_is_fetched_again_from_where_it_stopped(tmp_path: Path) -> None:
    async with (
        FakeOllama([BIG], models_dir=tmp_path / "source"),
        FakeOllama([], models_dir=tmp_path / "here") as here,
    ):
        registry = FakeRegistry(tmp_path / "source", registry_host="registry.ollama.ai")
        registry.cuts = [MIB + 5]
        async with registry:
            lines = await pull(
                here, f"{registry.url.removeprefix('http://')}/library/big:latest", insecure=True
            )
            ranges = [r.headers.get("Range") for r in registry.requests if r.headers.get("Range")]
        assert lines[-1] == {"status": "success"}
        # One part: the whole, then the rest from the byte the cut left it at.
        assert ranges[:2] == [f"bytes=0-{BIG.size - 1}", f"bytes={MIB + 5}-{BIG.size - 1}"]


async def test_a_pull_of_what_the_registry_lacks_or_over_https_it_does_not_speak_fails_as_ollamas(
    tmp_path: Path,
) -> None:
    async with (
        FakeOllama([], models_dir=tmp_path / "here") as here,
        FakeRegistry(tmp_path / "empty", registry_host="registry.ollama.ai") as registry,
    ):
        host = registry.url.removeprefix("http://")
        lines = await pull(here, f"{host}/library/none:latest", insecure=True)
        assert lines == [
            {"status": "pulling manifest"},
            {"error": "pull model manifest: file does not exist"},
        ]
        lines = await pull(here, f"{host}/library/none:latest")
        assert lines[-1]["error"].startswith(f'pull model manifest: Get "https://{host}/v2/library/none')


async def test_an_uploaded_blob_is_a_file_and_a_model_created_from_it_names_it(tmp_path: Path) -> None:
    weights = b"GGUF" + bytes(range(256)) * 64
    digest = f"sha256:{hashlib.sha256(weights).hexdigest()}"
    async with FakeOllama([], models_dir=tmp_path) as fake, aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/api/blobs/{digest}", data=weights) as reply:
            assert reply.status == 201
        assert (tmp_path / "blobs" / digest.replace(":", "-")).read_bytes() == weights
        body = {"model": "mine", "files": {"mine.gguf": digest}, "stream": False}
        async with http.post(f"{fake.url}/api/create", json=body) as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "success"})
        manifest = (tmp_path / "manifests/registry.ollama.ai/library/mine/latest").read_bytes()
        assert json.loads(manifest)["layers"][0] == {
            "mediaType": "application/vnd.ollama.image.model",
            "digest": digest,
            "size": len(weights),
        }
        # A model made from it shares its files.
        body = {"model": "yours", "from": "mine", "stream": False}
        async with http.post(f"{fake.url}/api/create", json=body) as reply:
            assert reply.status == 200
        listed = await tags(fake)
        assert listed["mine:latest"] == listed["yours:latest"] == hashlib.sha256(manifest).hexdigest()
