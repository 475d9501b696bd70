"""The loss, training-step and evaluation benchmarks of a base commit and of the working tree,
run alternately, with each figure's ratio new/old and a verdict.

Run before a change to the losses, the engine or the evaluation lands (and paste the table
into the change's description): ``.venv/bin/python scripts/bench_compare.py BASE [--rounds 3]
[--only losses,train,eval] [--quick] [--fail-on-flag]``. BASE is a commit, tag or branch
(default ``HEAD``: what the uncommitted changes do).

BASE is checked out into a temporary ``git worktree`` (removed at the end, on an error and
on Ctrl-C or SIGTERM alike), and the working tree's copies of the benchmark scripts are put
into it, so both sides are measured by the same benchmark code; each benchmark runs as a
subprocess with ``PYTHONPATH`` and the working directory set to its tree. Per round, every
benchmark runs for both trees back to back, base first in even rounds and second in odd
ones (A B, B A, ...), so that a drift in the machine's load hits both alike; a figure's
ratio is the median over the rounds of new/old within a round.

Figures: every row of ``bench_losses.py`` as its ratio to BCE (paired runs, 2 threads, the
full 8192 x 1231 batch), so the ratio new/old of a loss does not depend on how busy the
machine was; ``bench_train.py`` (small backbone, 320 px, 2 threads, 6 steps): stage-1 and
stage-2 ms per step, wall and CPU, each divided by the bare torchvision step's (the same
code on both sides, interleaved with ours in one process, so the load cancels); ``bench_eval.py``
(2,000 images x 300 detections): evaluation wall time (no control in the run: the noisiest
figure on a busy machine) and peak RSS above its baseline. A figure is flagged when it is more
than 10 % slower (or larger, for memory) than on BASE in the median over the rounds AND in
every round: one round that disagrees makes it "unclear" (rerun with more ``--rounds``), so
that a busy machine does not flag code nobody touched. The release-style ACSL loop of
``bench_losses.py`` is script code, the same on both sides: it is printed as the control,
and how far it moved is the run's noise floor. With ``--fail-on-flag`` the exit status is 1
when a figure is flagged. A benchmark that fails on one side (BASE may predate what the
script needs) is reported, its figures left out. ``--quick`` runs every benchmark in its ``--quick``
mode, one round: it checks that the comparison runs, its ratios mean little. On a CPU shared
with other jobs, raise ``--rounds`` and read the medians with that in mind; Ctrl-C (or SIGTERM)
stops it and prints the pairs completed so far.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("bench_losses.py", "bench_losses_refs.py", "bench_train.py", "bench_eval.py")
FLAG_ABOVE = 1.10  # slower by more than 10 %
#: figures computed by the same (script) code on both sides: their ratio is the noise
CONTROLS = ("losses: acsl, per-class loop (release style) (x BCE)",)
BENCHES = ("losses", "train", "eval")

#: figure name -> (value, higher_is_worse)
Figures = dict[str, tuple[float, bool]]


class BenchFailed(RuntimeError):
    """A benchmark subprocess exited non-zero (its stderr's tail is the message)."""


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchFailed(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def run_script(tree: Path, name: str, args: list[str]) -> str:
    """stdout of ``tree/scripts/name args`` run against ``tree``'s package."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(tree / "scripts" / name), *args], cwd=tree,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BenchFailed(f"{name} exited {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def losses_figures(tree: Path, out: Path, quick: bool) -> Figures:
    out.unlink(missing_ok=True)
    run_script(tree, "bench_losses.py", ["--json", str(out), "--threads", "2"]
               + (["--quick"] if quick else ["--repeats", "5"]))
    data = json.loads(out.read_text())
    return {f"losses: {key} (x BCE)": (value, True) for key, value in data["x_bce"].items()
            if not key.startswith("BCE baseline")}


def train_figures(tree: Path, out: Path, quick: bool) -> Figures:
    out.unlink(missing_ok=True)
    run_script(tree, "bench_train.py", ["--json", str(out), "--threads", "2"]
               + (["--quick"] if quick else ["--size", "320", "--iters", "6"]))
    data = json.loads(out.read_text())
    ms, cpu = data["ms"], data["cpu_ms"]
    # the bare torchvision step is the same code on both sides and runs interleaved with
    # ours in one process: dividing by it takes the machine's load out of the figure
    figures: Figures = {}
    for key, label in (("ours", "stage 1"), ("stage2", "stage 2")):
        figures[f"train: {label} ms/step / bare step"] = (ms[key] / ms["bare"], True)
        figures[f"train: {label} CPU ms/step / bare step"] = (cpu[key] / cpu["bare"], True)
    return figures


def eval_figures(tree: Path, out: Path, quick: bool) -> Figures:
    text = run_script(tree, "bench_eval.py", ["--quick"] if quick else ["--images", "2000"])
    found = {}
    for name, pattern in (("seconds", r"\| evaluation wall time \| ([0-9.]+) s"),
                          ("MiB", r"\| peak RSS above baseline \| (-?[0-9,.]+) MiB")):
        match = re.search(pattern, text)
        if match is None:
            raise BenchFailed(f"bench_eval.py: no '{name}' figure in its output")
        found[name] = float(match.group(1).replace(",", ""))
    return {"eval: evaluation wall time (s)": (found["seconds"], True),
            "eval: peak RSS above baseline (MiB)": (found["MiB"], True)}


RUNNERS: dict[str, Callable[[Path, Path, bool], Figures]] = {
    "losses": losses_figures, "train": train_figures, "eval": eval_figures}


def compare(base_tree: Path, scratch: Path, benches: list[str], rounds: int, quick: bool,
            pairs: dict[str, list[tuple[float, float]]], worse_up: dict[str, bool],
            failures: list[str]) -> None:
    """Fill in per figure the (old, new) pairs of every round, its direction, and failures
    (in place, so that an interrupted comparison still reports its completed pairs)."""
    broken: set[tuple[str, str]] = set()
    for r in range(rounds):
        sides = [("old", base_tree), ("new", ROOT)]
        if r % 2:
            sides.reverse()
        for bench in benches:
            got: dict[str, Figures] = {}
            for side, tree in sides:
                if (bench, side) in broken:
                    continue
                print(f"round {r + 1}/{rounds}: {bench} ({side})", file=sys.stderr, flush=True)
                try:
                    got[side] = RUNNERS[bench](tree, scratch / f"{bench}-{side}.json", quick)
                except (BenchFailed, OSError, ValueError, KeyError) as e:
                    broken.add((bench, side))
                    where = "BASE" if side == "old" else "working tree"
                    failures.append(f"{bench} on {where}: {e}")
            if len(got) < 2:
                continue
            for name, (new, up) in got["new"].items():
                if name in got["old"]:
                    pairs.setdefault(name, []).append((got["old"][name][0], new))
                    worse_up[name] = up


def verdict(ratios: list[float], worse_up: bool, name: str) -> tuple[str, bool]:
    """The verdict on a figure's per-round ratios new/old and whether it is flagged: the
    median past the threshold and every round with it, or "unclear" when rounds disagree."""
    worse = [r if worse_up else (1 / r if r else float("inf")) for r in ratios]
    median = statistics.median(worse)
    if name in CONTROLS:
        return "control (same code on both sides)", False
    if median > FLAG_ABOVE:
        if min(worse) > FLAG_ABOVE:
            return ("**LARGER (flagged)**" if "MiB" in name else "**SLOWER (flagged)**"), True
        return "unclear (rounds disagree: rerun with more --rounds)", False
    if median < 1 / FLAG_ABOVE:
        return ("better" if max(worse) < 1 / FLAG_ABOVE else
                "unclear (better in the median, not in every round)"), False
    return "same (within 10 %)", False


def report(pairs: dict[str, list[tuple[float, float]]], worse_up: dict[str, bool],
           failures: list[str], base: str, commit: str, quick: bool) -> int:
    """Print the table; return how many figures are flagged."""
    print(f"\nworking tree ({ROOT}) vs BASE {base} ({commit[:12]}); ratio = median over rounds "
          f"of new/old (range: the rounds' lowest and highest); flagged: more than "
          f"{100 * (FLAG_ABOVE - 1):.0f} % slower in the median and in every round\n")
    if quick:
        print("--quick: tiny sizes, one round; the ratios below check the plumbing only\n")
    print("| figure | old | new | new/old | range | verdict |")
    print("|---|---:|---:|---:|---|---|")
    flagged = 0
    noise = []
    for name, values in pairs.items():
        ratios = [new / old if old else float("inf") for old, new in values]
        text, flag = verdict(ratios, worse_up[name], name)
        flagged += flag
        if name in CONTROLS:
            noise += [abs(r - 1) for r in ratios]
        old = statistics.median(v[0] for v in values)
        new = statistics.median(v[1] for v in values)
        print(f"| {name} | {old:.3g} | {new:.3g} | {statistics.median(ratios):.3f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} | {text} |")
    for failure in failures:
        print(f"\nnot compared: {failure}")
    if noise:
        print(f"\nnoise floor: the control (same code on both sides) moved by up to "
              f"{100 * max(noise):.0f} % in a round")
    print(f"\n{flagged} figure(s) flagged of {len(pairs)} compared")
    return flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", default="HEAD", help="commit, tag or branch")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true",
                        help="every benchmark in its --quick mode, one round (CI runs it)")
    parser.add_argument("--fail-on-flag", action="store_true",
                        help="exit 1 when a figure is flagged")
    args = parser.parse_args(argv)
    benches = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown or not benches:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    rounds = 1 if args.quick else args.rounds
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    except BenchFailed:
        print(f"error: BASE {args.base!r}: not a commit of the repository at {ROOT}",
              file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the cleanup below

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    scratch = Path(tempfile.mkdtemp(prefix="bench_compare_"))
    base_tree = scratch / "base"
    pairs: dict[str, list[tuple[float, float]]] = {}
    worse_up: dict[str, bool] = {}
    failures: list[str] = []
    try:
        git("worktree", "add", "--detach", str(base_tree), commit)
        for name in COPIED:  # the same benchmark code on both sides
            shutil.copy2(ROOT / "scripts" / name, base_tree / "scripts" / name)
        compare(base_tree, scratch, benches, rounds, args.quick, pairs, worse_up, failures)
        flagged = report(pairs, worse_up, failures, args.base, commit, args.quick)
    except KeyboardInterrupt:
        print("interrupted: " + ("the figures of the completed pairs follow" if pairs
                                 else "nothing compared"), file=sys.stderr)
        if pairs:
            report(pairs, worse_up, failures, args.base, commit, args.quick)
        return 130
    except BenchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        remove_worktree(base_tree, scratch)
    return 1 if flagged and args.fail_on_flag else 0


def remove_worktree(tree: Path, scratch: Path) -> None:
    """Remove the temporary worktree and its folder; a second Ctrl-C cannot cut this short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
