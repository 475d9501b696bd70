"""Live progress outside a terminal: with stderr piped, ``acsl train`` prints a training
line every ``schedule.log_every`` iterations (time per iteration, ETA, memory, losses),
and the live-log path it prints at start is the run's log while the run is going."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY

LINE = re.compile(r"^stage(1|2) it (\d+)/(\d+) epoch \d+/\d+ lr \S+ (\d+\.\d+) s/it "
                  r"eta (\d+h)?(\d+m)?\d+s peak rss \d+\.\d+ GiB( \S+ -?\d\S*)+$")


def test_piped_stderr_gets_iteration_lines_and_a_live_log_path(tmp_path):
    root = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "acsl_cli", "train", *TINY,
                          "schedule.max_iters=5", "schedule.log_every=2", "run_name=r", "loss=bce",
                          f"output_root={root}"], cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, live, seen_live = [], None, False
    for line in p.stderr:  # read while the run goes on
        lines.append(line.rstrip("\n"))
        if line.startswith("live log: "):
            live = Path(line.split(": ", 1)[1].strip())
            seen_live = live.is_file() and "train.log" in os.path.realpath(live)
    out = p.stdout.read()
    assert p.wait(timeout=600) == 0, "\n".join(lines[-20:])
    assert live == root / "live" / "r.log" and seen_live  # a link to the partial train.log
    assert not live.exists() and not live.is_symlink() and not live.parent.exists()
    its = [(m[1], int(m[2]), int(m[3])) for m in map(LINE.match, lines) if m]
    # iterations 1, 3, 5 of 5 for each stage (every 2nd, and the last)
    assert [(s, i) for s, i, _ in its] == [("1", 1), ("1", 3), ("1", 5),
                                           ("2", 1), ("2", 3), ("2", 5)], lines
    assert {n for _, _, n in its} == {5}
    log = (root / "runs" / "r" / "train.log").read_text()
    assert sum(bool(LINE.search(ln.split(" INFO ", 1)[-1])) for ln in log.splitlines()) == 6
    assert "run directory" in out
