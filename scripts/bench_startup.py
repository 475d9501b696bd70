"""Start-up wall time of the light ``acsl`` commands, side by side with ``import torch``.

Run: ``.venv/bin/python scripts/bench_startup.py [--repeats 5]``. Each command is a fresh
subprocess (``acsl --help``, ``acsl losses``, ``acsl --version``, ``python -c "import
torch"``, and ``python -c pass`` as the floor). Commands are timed round-robin (one run of
each, then the next round) after one warm-up round, so that load from other processes and
the file cache hit all of them alike; the table gives the median per command and its
ratio to ``import torch``. The light commands should not import torch at all, so they
should stay well below 1.0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def acsl_command() -> list[str]:
    """The ``acsl`` console script of this interpreter's environment, else ``-m acsl_cli``."""
    script = Path(sys.executable).parent / "acsl"
    if script.is_file():
        return [str(script)]
    found = shutil.which("acsl")
    return [found] if found else [sys.executable, "-m", "acsl_cli"]


def commands() -> dict[str, list[str]]:
    acsl = acsl_command()
    return {
        "acsl --help": [*acsl, "--help"],
        "acsl losses": [*acsl, "losses"],
        "acsl --version": [*acsl, "--version"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }


def run_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "COLUMNS": "100"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the script runs (CI runs it)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1

    cmds = commands()
    for cmd in cmds.values():  # warm-up round: file cache, .pyc files
        run_once(cmd)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            times[name].append(run_once(cmd))

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    torch_s = medians['python -c "import torch"']
    print(f"median of {args.repeats} runs each, {sys.executable}, {os.cpu_count()} CPUs\n")
    print("| command | median wall time | x `import torch` |")
    print("|---|---|---|")
    for name, s in medians.items():
        print(f"| `{name}` | {s * 1000:.0f} ms | {s / torch_s:.2f} |")


if __name__ == "__main__":
    main()
