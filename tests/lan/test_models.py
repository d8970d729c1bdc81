"""Models travel over a real LAN: three machines, two with a 1 GiB model (random bytes) and one without.
`inferhub pull` on the third copies it from the other two with Ollama's progress, byte for byte, and
keeps going when one of them dies mid-copy; a damaged file is refused and fetched from the other; a
machine of another pool gets no file; and with no member having the model, the pull goes to the
registry."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lan.machines import Machine, start_machines, wait_for
from tests.lan.netns import Lan, netns_unavailable
from tests.support import ROOT

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))

GIB = 1 << 30
SHARE = "http://{ip}:11436/_inferhub/v1/models/manifests/registry.ollama.ai/library/big/latest"


def blobs(root: Path) -> dict[str, str]:
    """The blobs of a models directory, each with its sha256 as read now."""
    found = {}
    for path in sorted((root / "blobs").iterdir()):
        hasher = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 24):
                hasher.update(chunk)
        found[path.name] = hasher.hexdigest()
    return found


def fetch(machine: Machine, url: str, body: dict[str, str] | None = None) -> tuple[int, str]:
    """GET (or POST `body` to) a URL from a machine; return the status and the text."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "data = sys.argv[2].encode() if sys.argv[2] else None\n"
        "try:\n"
        "    reply = urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=data), timeout=20)\n"
        "    print(reply.status); print(reply.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
        "except OSError as e:\n"
        "    print(0); print(repr(e))\n"
    )
    done = machine.host.run(
        [sys.executable, "-c", script, url, json.dumps(body) if body else ""],
        timeout=30,
        capture_output=True,
        text=True,
    )
    status, _, text = done.stdout.partition("\n")
    return int(status), text


def show(machine: Machine) -> dict[str, object]:
    status, text = fetch(machine, "http://127.0.0.1:11434/api/show", {"model": "big"})
    assert status == 200, text
    answer: dict[str, object] = json.loads(text)
    answer.pop("modified_at")
    return answer


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[list[Machine]]:
    """node0 without the model; node1 and node2 with it, lending to the LAN, node1 slowly."""
    models = [tmp_path / f"models{i}" for i in range(3)]
    fakes = [
        ["--models-dir", str(models[0]), "--model", "small:latest@4096", "--registry", "tiny:latest@4096"],
        ["--models-dir", str(models[1]), "--model", f"big:latest@{GIB}"],
        ["--models-dir", str(models[2]), "--model", f"big:latest@{GIB}"],
    ]
    with Lan(3) as lan:

        def lending(i: int) -> list[str]:
            return ["--lend-models", "lan", *(["--lend-mib-s", "100"] if i == 1 else [])]

        machines = start_machines(
            lan, tmp_path, fakes, lending, environ=lambda i: {"OLLAMA_MODELS": str(models[i])}
        )
        try:
            wait_for(
                lambda: all(
                    "big:latest" in machines[0].peers().get(n, {}).get("models", [])
                    for n in ("node1", "node2")
                ),
                60,
                "node0 seeing the model on node1 and node2",
            )
            yield machines
        finally:
            for m in machines:
                print(f"--- {m.name} log\n{m.node_log.read_text()[-4000:]}")


def pull(machine: Machine, *args: str) -> subprocess.Popen[str]:
    return machine.host.popen(
        [sys.executable, "-m", "inferhub_desktop", "pull", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "INFERHUB_CONFIG_DIR": str(machine.config_dir)},
    )


def test_a_model_is_copied_from_members_and_a_member_dying_mid_copy_costs_a_retry(
    machines: list[Machine], tmp_path: Path
) -> None:
    here, slow, _ = machines
    copy = pull(here, "big")
    partial = tmp_path / "models0" / "blobs"
    wait_for(lambda: any(p.name.endswith("-partial") for p in partial.iterdir()), 30, "the copy under way")
    # The slow member is serving its turn of the parts: it dies as a killed process does.
    slow.node.send_signal(signal.SIGKILL)
    output, _ = copy.communicate(timeout=180)
    print(output)
    assert copy.returncode == 0, output
    lines = output.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    # Every file of the model, byte for byte, and nothing half-written left behind.
    copied = blobs(tmp_path / "models0")
    assert blobs(tmp_path / "models2").items() <= copied.items()
    assert not [name for name in copied if "partial" in name]
    assert show(here) == show(machines[2])
    status, text = fetch(
        here, "http://127.0.0.1:11435/api/generate", {"model": "big", "prompt": "hi", "stream": False}
    )
    assert status == 200, text
    assert "lending big:latest" in machines[2].node_log.read_text()


def test_a_damaged_file_is_refused_and_fetched_from_the_other_member(
    machines: list[Machine], tmp_path: Path
) -> None:
    here = machines[0]
    manifest = tmp_path / "models1" / "manifests" / "registry.ollama.ai" / "library" / "big" / "latest"
    weights = json.loads(manifest.read_bytes())["layers"][0]["digest"].replace(":", "-")
    # A byte wrong in every part it could send.
    with (tmp_path / "models1" / "blobs" / weights).open("r+b") as file:
        for offset in range(0, GIB, 32 << 20):
            file.seek(offset)
            byte = file.read(1)
            file.seek(offset)
            file.write(bytes([byte[0] ^ 0xFF]))
    copy = pull(here, "big")
    output, _ = copy.communicate(timeout=180)
    print(output)
    assert copy.returncode == 0, output
    assert "damaged file" in output
    assert blobs(tmp_path / "models0")[weights] == blobs(tmp_path / "models2")[weights]


def test_a_machine_of_another_pool_gets_no_file_and_a_model_no_member_has_comes_from_the_registry(
    machines: list[Machine], tmp_path: Path
) -> None:
    here, lender, _ = machines
    # A private pool of its own: node1 lends only to its members, and node0 is not one.
    assert "this machine is its authority" in lender.cli("pool", "create")
    wait_for(lambda: "node1" not in here.peers(), 20, "node0 dropping node1 once it made its own pool")
    # Neither over TLS without a member's certificate, nor in plain HTTP.
    for url in (
        SHARE.format(ip=lender.host.ip).replace("http://", "https://"),
        SHARE.format(ip=lender.host.ip),
    ):
        status, text = fetch(here, url)
        assert status in (0, 401), text
    copy = pull(here, "tiny")
    output, _ = copy.communicate(timeout=60)
    assert copy.returncode == 0, output
    assert output.splitlines()[-1] == "success"
    assert "lending" not in lender.node_log.read_text()
