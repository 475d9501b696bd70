"""Wall time of one sweep with each launcher, side by side in one run.

Run: ``.venv/bin/python scripts/bench_launchers.py [--partition debug] [--parallel 2]``
(Slurm: ``scripts/slurm_local.sh start`` first). Times ``acsl sweep schedule=smoke
seed=0,1,2`` in process, with ``launcher=local launcher.max_parallel=N`` and with
``launcher=slurm``, each from a fresh ``output_root`` (the benchmark generated and every
stage 1 trained each time), one after the other, and prints the three wall times and their
ratios to the in-process one. Without Slurm (no ``sbatch``/``squeue``, no controller that
answers, or no submitit) it times the other two and says which launcher it skipped and
why. ``--repeats R`` runs R rounds, each starting one variant
later (so no variant always meets the machine's load first), and prints the medians;
``--start K`` starts the first round at variant K. Extra arguments go to every sweep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "acsl_cli", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"acsl {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-2000:]}")
    return seconds


def slurm_missing() -> str | None:
    """Why launcher=slurm cannot run here (no sbatch or squeue, no submitit), or None."""
    import importlib.util
    import shutil

    tools = [t for t in ("sbatch", "squeue") if shutil.which(t) is None]
    if tools:
        return (f"no {' or '.join(tools)} on PATH (a local cluster: "
                "scripts/slurm_local.sh start)")
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install '.[slurm]')"
    try:
        probe = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"squeue failed ({e.__class__.__name__})"
    if probe.returncode != 0:
        reason = " ".join(probe.stderr.split())[:160] or f"exit {probe.returncode}"
        return f"no Slurm controller answers ({reason}; scripts/slurm_local.sh start)"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--partition", default="debug")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="one seed of a tiny benchmark: checks that the script runs (CI)")
    a, extra = p.parse_known_args()
    if a.quick:
        a.seeds = "0"
        extra += ["dataset.num_classes=8", "dataset.max_images_per_class=12",
                  "dataset.val_instances_per_class=2"]
    sweep = ["sweep", "schedule=smoke", f"seed={a.seeds}", "progress=false", *extra]
    variants = {
        "in process": [],
        f"launcher=local max_parallel={a.parallel}": ["launcher=local",
                                                      f"launcher.max_parallel={a.parallel}"],
        "launcher=slurm": ["launcher=slurm", f"launcher.partition={a.partition}"],
    }
    why = slurm_missing()
    if why:  # time the launchers this machine has, and name the one left out
        del variants["launcher=slurm"]
        print(f"skipped launcher=slurm: {why}", flush=True)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    with tempfile.TemporaryDirectory(prefix="acsl-bench-launchers-") as tmp:
        for r in range(a.repeats):
            k = (a.start + r) % len(names)
            for name in names[k:] + names[:k]:
                out = Path(tmp) / f"{r}-{names.index(name)}"
                samples[name].append(timed([*sweep, *variants[name], f"output_root={out}",
                                            "run_name=bench"]))
                print(f"round {r}: {name:32s} {samples[name][-1]:7.1f} s", flush=True)
    times = {name: statistics.median(v) for name, v in samples.items()}
    ref = times["in process"]
    print(f"\n{' '.join(['acsl', *sweep])}  (CPUs: {os.cpu_count()})")
    print(f"{'launcher':32s} {'wall s':>7s} {'x in process':>13s}")
    for name, seconds in times.items():
        print(f"{name:32s} {seconds:7.1f} {seconds / ref:13.2f}")


if __name__ == "__main__":
    main()
