"""Safe on a shared machine: concurrent runs, signals, corrupt caches, pickles, bad paths,
diverging losses. Each case runs the real ``acsl`` command in a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_engine import TINY

SMOKE = [*TINY]


def acsl(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def leftovers(root: Path) -> list[str]:
    """Hidden partial folders and temp files anywhere under ``root`` (locks excepted)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if not p.name.endswith(".lock"))


def test_three_concurrent_cold_runs_succeed_and_a_fourth_reuses_the_cache(tmp_path):
    root = tmp_path / "outputs"
    procs = [acsl("train", *SMOKE, f"output_root={root}", f"seed={s}", cwd=tmp_path)
             for s in (0, 0, 1)]
    results = [finish(p) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-2000:]
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert len(runs) == 3 and len(set(runs)) == 3
    assert len(list((root / "cache" / "stage1").glob("*/checkpoint.pt"))) == 2  # seeds 0, 1
    assert "stage 1 reused" in "".join(out for _, out, _ in results)  # the 2nd seed-0 run
    rc, out, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0 and "stage 1 reused" in out, err
    assert leftovers(root) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_killed_mid_run_leaves_nothing_broken_and_a_rerun_works(tmp_path, sig, code):
    root = tmp_path / "outputs"
    slow = [*SMOKE, "schedule.max_iters=400", "schedule.stage1.epochs=200",
            f"output_root={root}"]
    p = acsl("train", *slow, cwd=tmp_path)
    deadline = time.time() + 120
    while not list(root.glob("cache/data/*/train.json")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # now in stage 1
    p.send_signal(sig)
    rc, _, err = finish(p)
    assert rc == code, err
    if sig == signal.SIGTERM:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("terminated") and "Traceback" not in err
        assert leftovers(root) == []
    assert not (root / "runs").exists() or not [r for r in (root / "runs").iterdir()
                                               if not r.name.startswith(".")]
    rc, out, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err[-2000:]
    assert leftovers(root) == []  # the dead process's partial folders were cleaned up


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "acsl-detector/1", "x": _Payload(marker)}))
    rc, _, err = finish(acsl("eval", f"ckpt={evil}", cwd=tmp_path))
    assert rc == 2 and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not marker.exists()
    # planted as a stage-1 resume file: reported, removed, the run trains afresh
    root = tmp_path / "outputs"
    from acsl_cli import config as config_mod
    from acsl_cli.settings import stage1_key

    key = stage1_key(config_mod.load_settings([*SMOKE, f"output_root={root}"]), 1)
    resume = root / "cache" / "stage1" / f"{key}.resume.pt"
    resume.parent.mkdir(parents=True)
    resume.write_bytes(evil.read_bytes())
    rc, _, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err[-2000:]
    assert not marker.exists() and not resume.exists()
    # planted as the cached stage-1 checkpoint: reported as corrupt and rebuilt
    cached = root / "cache" / "stage1" / key / "checkpoint.pt"
    cached.write_bytes(evil.read_bytes())
    rc, out, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0 and "stage 1 trained" in out, err[-2000:]
    assert not marker.exists()


def test_a_corrupt_stage1_cache_is_reported_and_rebuilt(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err
    ckpt = next(root.glob("cache/stage1/*/checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    rc, out, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err
    assert "stage 1 trained" in out
    log = next(p for p in (root / "runs").iterdir() if p.stat().st_mtime
               == max(q.stat().st_mtime for q in (root / "runs").iterdir()))
    assert "corrupt" in (log / "train.log").read_text()
    rc, out, _ = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0 and "stage 1 reused" in out


def test_a_diverging_loss_stops_with_one_line_and_exit_1(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *SMOKE, "schedule.max_iters=12", "loss=bce",
                             "schedule.stage2.lr=1e6", "schedule.stage2.warmup_iters=0",
                             f"output_root={root}", cwd=tmp_path))
    assert rc == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: stage 2, head bce:") and "iteration" in line, err
    assert "Traceback" not in err
    assert list(root.glob("cache/stage1/*/checkpoint.pt"))  # the good stage 1 is kept
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


@pytest.mark.parametrize("args, expect", [
    (["out={tmp}"], "out="),  # a directory
    (["out={tmp}/afile/m.json"], "out="),  # parent is a file
    (["run_name=a/b"], "run_name"),
    (["run_name=.."], "run_name"),
    (["output_root={tmp}/afile"], "output_root"),
])
def test_bad_paths_fail_before_any_work(tmp_path, args, expect):
    (tmp_path / "afile").write_text("x")
    root = tmp_path / "o"
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("output_root=") for a in args):
        args.append(f"output_root={root}")
    rc, _, err = finish(acsl("train", *SMOKE, *args, cwd=tmp_path))
    assert rc == 2 and err.startswith("error: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (root / "cache").exists()  # no data generated, nothing trained


def test_worker_errors_are_the_same_one_line(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err
    train = json.loads(next(root.glob("cache/data/*/train.json")).read_text())
    folder = next(root.glob("cache/data/*/train.json")).parent
    for im in train["images"]:
        (folder / im["file_name"]).write_bytes(b"not a png")
    lines = []
    for workers in (0, 1):
        rc, _, err = finish(acsl("train", *SMOKE, f"schedule.workers={workers}", "seed=5",
                                 f"output_root={root}", cwd=tmp_path))
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and "cannot read image" in err, err
        lines.append(err.strip())
    assert lines[0] == lines[1]


def test_a_damaged_benchmark_cache_is_regenerated(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err
    folder = next(root.glob("cache/data/*/train.json")).parent
    victim = next(folder.rglob("*.png"))
    victim.unlink()
    rc, _, err = finish(acsl("train", *SMOKE, f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err[-2000:]
    assert victim.is_file()
    log = max((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime) / "train.log"
    assert "is corrupt" in log.read_text() and "not found" in log.read_text()
