"""Print an idle headless node's memory and CPU use.

python -m bench.idle [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from tests.support import start_fake_ollama_process, start_node_process, stop_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    fake, backend = start_fake_ollama_process()
    try:
        with tempfile.TemporaryDirectory() as config_dir:
            node, _ = start_node_process(Path(config_dir), backend)
            try:
                process = psutil.Process(node.pid)
                time.sleep(1.0)  # let start-up settle
                cpu_before = process.cpu_times()
                time.sleep(args.seconds)
                cpu_after = process.cpu_times()
                rss_mib = process.memory_info().rss / 2**20
            finally:
                stop_process(node)
    finally:
        stop_process(fake)
    busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    print(f"idle node: RSS {rss_mib:.1f} MiB, CPU {100 * busy / args.seconds:.2f}% over {args.seconds:.0f} s")


if __name__ == "__main__":
    main()
