"""Print how fast a model travels from a pool member: a copy through `inferhub pull` against `curl` of the
same blob over the same link, in one run, and what serving it costs the member.

    python -m bench.model_copy [--gib 1] [--rate 1gbit]   (root: a namespace LAN)

Two hosts on a simulated LAN whose member's link is shaped to `--rate` (a gigabit LAN by default; "none"
for the bare link): the member has a model of `--gib` GiB (random bytes) and lends it; the other copies it
with `inferhub pull` (its Ollama, a fake that pulls as Ollama does, fetching parts with Range and checking
every digest), and, as the baseline, `curl` fetches the model's weights from the member's share API. The
curl run goes first and the copy second, then both again, and each figure is the better of its two.

  MB/s         the model's bytes over the seconds from the command's start to its end
  member CPU   the member's node process, % of one core, over the copy
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.lan.machines import Machine, start_machines, wait_for
from tests.lan.netns import Lan, netns_unavailable
from tests.support import ROOT


def copy_once(here: Machine, models: Path) -> float:
    """Copy the model into `here`'s Ollama; return the seconds it took, then remove it again."""
    started = time.perf_counter()
    done = here.host.run(
        [sys.executable, "-m", "inferhub_desktop", "pull", "big"],
        timeout=900,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "INFERHUB_CONFIG_DIR": str(here.config_dir)},
    )
    took = time.perf_counter() - started
    if done.returncode != 0 or not done.stdout.rstrip().endswith("success"):
        raise SystemExit(f"the copy failed: {done.stdout}{done.stderr}")
    # The next copy starts from nothing again.
    shutil.rmtree(models / "manifests" / "registry.ollama.ai" / "library" / "big")
    for blob in (models / "blobs").iterdir():
        if blob.stat().st_size > 1 << 20:
            blob.unlink()
    return took


def curl_once(here: Machine, url: str) -> float:
    started = time.perf_counter()
    here.host.run(["curl", "-sf", "-o", "/dev/null", url], timeout=900, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rate", default="1gbit", help='the member\'s link rate for tc, or "none"')
    args = parser.parse_args()
    if reason := netns_unavailable():
        raise SystemExit(f"bench.model_copy needs a namespace LAN: {reason}")
    if shutil.which("curl") is None:
        raise SystemExit("bench.model_copy compares with curl: install it (apt-get install curl)")
    size = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory() as work, Lan(2) as lan:
        tmp = Path(work)
        models = [tmp / "models0", tmp / "models1"]
        fakes = [
            ["--models-dir", str(models[0]), "--model", "small:latest@4096", "--tps", "0"],
            ["--models-dir", str(models[1]), "--model", f"big:latest@{size}", "--tps", "0"],
        ]
        here, member = start_machines(
            lan,
            tmp,
            fakes,
            lambda i: ["--lend-models", "lan"],
            environ=lambda i: {"OLLAMA_MODELS": str(models[i])},
        )
        if args.rate != "none":
            member.host.run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "tbf",
                    "rate",
                    args.rate,
                    "burst",
                    "1mb",
                    "latency",
                    "50ms",
                ],
                timeout=10,
                check=True,
            )
        wait_for(
            lambda: "big:latest" in here.peers().get("node1", {}).get("models", []),
            60,
            "the copier seeing the model",
        )
        manifest = models[1] / "manifests" / "registry.ollama.ai" / "library" / "big" / "latest"
        weights = json.loads(manifest.read_bytes())["layers"][0]["digest"]
        url = f"http://{member.host.ip}:11436/_inferhub/v1/models/blobs/{weights}"
        node = psutil.Process(member.node.pid)
        curls, copies, cpu = [], [], []
        for _ in range(2):
            curls.append(curl_once(here, url))
            before = node.cpu_times()
            took = copy_once(here, models[0])
            after = node.cpu_times()
            copies.append(took)
            cpu.append(100 * (after.user + after.system - before.user - before.system) / took)
    mb = size / 1e6
    curl_rate, copy_rate = mb / min(curls), mb / min(copies)
    print(f"model {args.gib:g} GiB, member's link {args.rate}")
    print(f"{'':<22}{'MB/s':>8}{'member CPU %':>14}")
    print(f"{'curl of the weights':<22}{curl_rate:>8.0f}{'':>14}")
    print(f"{'inferhub pull':<22}{copy_rate:>8.0f}{cpu[copies.index(min(copies))]:>14.1f}")
    print(f"ratio {copy_rate / curl_rate:.2f} (target: at least 0.90)")


if __name__ == "__main__":
    main()
