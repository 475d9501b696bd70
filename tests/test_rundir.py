"""``pipeline.rundir``: atomic writes, locks, run folders and caches under concurrent and
killed processes (real subprocesses wherever the kernel is what makes it safe)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from acsl_cli import locks
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.pipeline import rundir
from acsl_cli.pipeline.rundir import (
    CacheEntry,
    FileLock,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    check_free_disk,
    check_out_file,
    check_output_root,
    check_run_name,
    clean_stale,
    default_run_name,
    strict_json,
    tmp_name,
)
from tests.terminal import default_sigint

REPO = Path(__file__).resolve().parents[1]


def child(code: str, **kw) -> subprocess.Popen:
    """A Python subprocess running ``code`` with ``acsl_cli`` importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                            stdout=subprocess.PIPE,
                            preexec_fn=default_sigint,
                            **kw)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- atomic writes ------------------------------------------------------------------------

def test_strict_json_writes_null_for_undefined_numbers(tmp_path):
    obj = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": (2, "x")}
    assert strict_json(obj) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2, "x"]}
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, obj)

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    assert json.loads(target.read_text(), parse_constant=refuse)["b"] == [1.5, None, {"c": None}]
    assert temps(target.parent) == []


def test_a_killed_writer_leaves_the_old_or_the_new_file_never_half(tmp_path):
    target = tmp_path / "big.bin"
    size = 1 << 20
    code = f"""
        from pathlib import Path
        from acsl_cli.pipeline.rundir import atomic_write_bytes
        i = 0
        while True:
            atomic_write_bytes(Path({str(target)!r}), (b"%08d" % i) * ({size} // 8))
            i += 1
    """
    for delay in (0.05, 0.13, 0.31):
        p = child(code)
        while not target.exists():
            time.sleep(0.01)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        data = target.read_bytes()
        assert len(data) == size and data == data[:8] * (size // 8)
    clean_stale(tmp_path)  # the temp file a killed writer may have left
    assert temps(tmp_path) == []


# --- FileLock -----------------------------------------------------------------------------

HOLD = """
    import sys, time
    from pathlib import Path
    from acsl_cli.pipeline.rundir import FileLock
    with FileLock(Path({path!r})):
        print("locked", flush=True)
        {inside}
    print("released", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_waits_for_the_lock_then_gets_it(tmp_path):
    target = tmp_path / "cache" / "entry"
    p = child(HOLD.format(path=str(target), inside="sys.stdin.readline()"),
              stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "locked"
    waits: list[str] = []

    def release() -> None:
        p.stdin.write("go\n")
        p.stdin.flush()

    threading.Timer(0.5, release).start()
    t0 = time.monotonic()
    with FileLock(target, on_wait=waits.append) as lock:
        waited = time.monotonic() - t0
        assert p.poll() is None  # released by the holder, not by its death
        assert lock.path.read_text().split()[0] == str(os.getpid())
    assert waited >= 0.4
    assert waits == [f"waiting for {target} (locked by pid {p.pid})"]
    assert p.stdout.readline().strip() == "released"
    p.stdin.close()
    p.wait(timeout=60)  # generous: CI may share its cores with training runs


def test_a_sigkilled_holder_leaves_no_stuck_lock(tmp_path):
    target = tmp_path / "entry"
    p = child(HOLD.format(path=str(target), inside="time.sleep(60)"), stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "locked"
    p.send_signal(signal.SIGKILL)
    p.wait()
    waits: list[str] = []
    with FileLock(target, on_wait=waits.append):
        pass
    assert waits == []


# --- clean_stale --------------------------------------------------------------------------

def test_clean_stale_removes_only_dead_processes_leftovers(tmp_path):
    p = child(f"""
        from pathlib import Path
        from acsl_cli.pipeline.rundir import tmp_name
        folder = Path({str(tmp_path)!r})
        tmp_name(folder / "metrics.json").write_text("half")
        run = tmp_name(folder / "run-1", "partial")
        run.mkdir()
        (run / "train.log").write_text("x")
    """)
    p.wait()
    mine = tmp_name(tmp_path / "metrics.json")
    mine.write_text("busy")
    other_host = tmp_path / f".a.json.elsewhere-{p.pid}-abcdef.tmp"
    other_host.write_text("x")
    keep = [tmp_path / ".hidden", tmp_path / "entry.lock", tmp_path / "run-2"]
    for k in keep:
        k.write_text("x")
    removed = clean_stale(tmp_path)
    assert len(removed) == 2 and all(f"-{p.pid}-" in r.name for r in removed)
    assert {r.suffix for r in removed} == {".tmp", ".partial"}
    assert not any(r.exists() for r in removed)
    assert mine.exists() and other_host.exists() and all(k.exists() for k in keep)
    assert clean_stale(tmp_path / "absent") == []


# --- RunDir -------------------------------------------------------------------------------

def test_commit_renames_the_partial_folder(tmp_path):
    run = RunDir(tmp_path / "runs", "r1")
    with run:
        partial = run.open()
        assert partial.name.startswith(".r1.") and partial.name.endswith(".partial")
        atomic_write_json(run.path / "metrics.json", {"AP": 1.0})
        assert run.commit() == tmp_path / "runs" / "r1"
    assert not partial.exists() and (tmp_path / "runs" / "r1" / "metrics.json").exists()
    assert run.path == run.final


def test_a_taken_name_keeps_both_runs(tmp_path, caplog):
    root = tmp_path / "runs"
    first, second = RunDir(root, "same"), RunDir(root, "same")
    for r, text in ((first, "one"), (second, "two")):
        r.open()
        (r.path / "who").write_text(text)
    assert first.commit() == root / "same"
    with caplog.at_level(logging.WARNING, logger="acsl"):
        other = second.commit()
    assert re.fullmatch(r"same-[0-9a-f]{4}", other.name) and "saved as" in caplog.text
    assert (root / "same" / "who").read_text() == "one" and (other / "who").read_text() == "two"
    (root / "empty").mkdir()  # plain rename() would silently replace an empty folder
    third = RunDir(root, "empty")
    third.open()
    assert third.commit().name.startswith("empty-")


def test_concurrent_commits_of_one_name_all_survive(tmp_path):
    root = tmp_path / "runs"
    code = f"""
        import os
        from pathlib import Path
        from acsl_cli.pipeline.rundir import RunDir
        r = RunDir(Path({str(root)!r}), "same")
        r.open()
        (r.path / "pid").write_text(str(os.getpid()))
        print(r.commit().name)
    """
    procs = [child(code) for _ in range(4)]
    names = [p.communicate(timeout=30)[0].strip() for p in procs]
    assert len(set(names)) == 4 and "same" in names
    assert sorted(names) == sorted(p.name for p in root.iterdir())
    assert {(root / n / "pid").read_text() for n in names} == {str(p.pid) for p in procs}


def test_failed_renames_fall_back_to_a_visible_name_then_keep_the_partial(tmp_path,
                                                                          monkeypatch):
    real = rundir.rename_noreplace

    def no_space(src: Path, dst: Path) -> None:
        if "unfinalised" not in dst.name:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(rundir, "rename_noreplace", no_space)
    run = RunDir(tmp_path, "r")
    run.open()
    assert re.fullmatch(r"r-unfinalised-[0-9a-f]{4}", run.commit().name)

    def broken(src: Path, dst: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rundir, "rename_noreplace", broken)
    run = RunDir(tmp_path, "r2")
    partial = run.open()
    with run:
        assert run.commit() == partial
    assert partial.is_dir()  # finished work is never deleted


def test_rename_noreplace_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "_libc", object())
    (tmp_path / "a").mkdir()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        locks.rename_noreplace(tmp_path / "a", tmp_path / "taken")
    locks.rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").is_dir() and not (tmp_path / "a").exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, None])
def test_leaving_without_commit_removes_the_partial_folder(tmp_path, error):
    run = RunDir(tmp_path, "r")
    try:
        with run:
            (run.open() / "train.log").write_text("x")
            if error:
                raise error("stop")
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert list(tmp_path.iterdir()) == []
    run.abort()  # twice is harmless


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_or_killed_run_leaves_nothing_after_the_next_open(tmp_path, sig):
    p = child(f"""
        import time
        from pathlib import Path
        from acsl_cli.pipeline.rundir import RunDir
        with RunDir(Path({str(tmp_path)!r}), "r") as run:
            print(run.open(), flush=True)
            time.sleep(60)
    """)
    partial = Path(p.stdout.readline().strip())
    assert partial.is_dir()
    p.send_signal(sig)
    p.wait(timeout=60)  # generous: CI may share its cores with training runs
    if sig == signal.SIGINT:
        assert not partial.exists()  # KeyboardInterrupt aborted it
    RunDir(tmp_path, "next").open()
    assert not partial.exists()


def test_run_dir_refuses_a_bad_name(tmp_path):
    with pytest.raises(ConfigError, match="run_name"):
        RunDir(tmp_path, "../escape")


# --- CacheEntry ---------------------------------------------------------------------------

def test_cache_entry_is_complete_published_or_rebuilt(tmp_path, caplog):
    folder = tmp_path / "stage1" / "key"
    entry = CacheEntry(folder, ["checkpoint.pt", "metrics.json"])
    assert not entry.complete()
    tmp = tmp_name(folder)
    tmp.mkdir(parents=True)
    (tmp / "checkpoint.pt").write_bytes(b"w")
    with pytest.raises(DataError, match="metrics.json"):
        entry.publish(tmp)  # never publishes half an entry
    (tmp / "metrics.json").write_text("{}")
    assert entry.publish(tmp) == folder and entry.complete() and not tmp.exists()
    (folder / "metrics.json").write_text("")  # truncated
    assert not entry.complete()
    with caplog.at_level(logging.WARNING, logger="acsl"):
        entry.invalidate("unreadable metrics")
    assert caplog.messages == [f"cache entry {folder} is corrupt (unreadable metrics): rebuilding"]
    assert not folder.exists() and temps(folder.parent) == []
    (folder / "old").mkdir(parents=True)  # a corrupt entry is replaced by publish
    tmp = tmp_name(folder)
    tmp.mkdir()
    atomic_write_bytes(tmp / "checkpoint.pt", b"w")
    atomic_write_bytes(tmp / "metrics.json", b"{}")
    entry.publish(tmp)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "metrics.json"]
    dead = folder.parent / f".key.{locks._host()}-{dead_pid()}-abcdef.tmp"
    dead.mkdir()  # a killed builder's temp folder
    assert entry.complete() and not dead.exists()


# --- names --------------------------------------------------------------------------------

def test_default_run_names_are_distinct_and_tidy():
    names = [default_run_name("acsl xi/0.01", 3) for _ in range(1000)]
    assert len(set(names)) == 1000
    assert re.fullmatch(r"\d{8}-\d{6}-\d{6}-s3-acsl-xi-0\.01-[0-9a-f]{4}", names[0])
    assert len(default_run_name("x" * 500, 0)) < 100
    code = "from acsl_cli.pipeline.rundir import default_run_name as d\n" \
           "print('\\n'.join(d('sweep', 0) for _ in range(300)))"
    procs = [child(code) for _ in range(2)]
    both = [n for p in procs for n in p.communicate(timeout=30)[0].split()]
    assert len(both) == 600 and len(set(both)) == 600


# --- preflight ----------------------------------------------------------------------------

def test_output_root_check(tmp_path):
    good = tmp_path / "a" / "outputs"
    check_output_root(good)
    assert good.is_dir() and list(good.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub", Path("/proc"),
                Path("/proc/acsl-test")):
        with pytest.raises(ConfigError, match=f"^output_root={re.escape(str(bad))}: "):
            check_output_root(bad)
    with pytest.raises(ConfigError, match="^root="):
        check_output_root(tmp_path / "afile", key="root")


def test_out_file_check(tmp_path):
    check_out_file(tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []  # nothing written
    # a mistyped folder is refused in one line, not created (out=/nonexistent/dir/m.json)
    for missing in (tmp_path / "new" / "deeper" / "m.json", Path("/nonexistent-acsl/d/m.json")):
        with pytest.raises(ConfigError, match=f"^out={re.escape(str(missing))}: folder "
                           f"{re.escape(str(missing.parent))} does not exist"):
            check_out_file(missing)
    assert list(tmp_path.iterdir()) == [] and not Path("/nonexistent-acsl").exists()
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path, tmp_path / "afile" / "m.json", tmp_path / "afile" / "d" / "m.json",
                Path("/proc/m.json")):
        with pytest.raises(ConfigError, match=f"^out={re.escape(str(bad))}: "):
            check_out_file(bad)


def test_out_file_relative_to_the_working_folder(tmp_path, monkeypatch):
    """``out=m.json`` (acsl eval --help's example) is a file in the working folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    check_out_file(Path("m.json"))
    check_out_file(Path("sub/m.json"))
    with pytest.raises(ConfigError, match="^out=new/m.json: folder new does not exist"):
        check_out_file(Path("new/m.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


@pytest.mark.parametrize("name", ["a/b", "..", ".", ".hidden", "", "a\\b", "a\0b", "x" * 201])
def test_run_name_check_rejects(name):
    with pytest.raises(ConfigError, match="^run_name="):
        check_run_name(name)


def test_run_name_check_accepts_plain_names():
    for name in ("exp1", "acsl-xi_0.01", "x" * 200):
        check_run_name(name)


def test_free_disk_check(tmp_path):
    check_free_disk(tmp_path / "not" / "yet", 1000)
    with pytest.raises(ConfigError, match=r"^output_root=.*needs about .* GB free, has .*B"):
        check_free_disk(tmp_path / "not" / "yet", int(1e18))


def test_no_torch():
    code = "import sys, acsl_cli.pipeline.rundir; print('torch' in sys.modules)"
    assert child(code).communicate(timeout=30)[0].strip() == "False"
