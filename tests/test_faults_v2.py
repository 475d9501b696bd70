"""Faults, part 2 (issue #15): the loss guard in short runs, interrupted benchmark
generation, failed writes, and malformed results files. Whatever goes wrong ends in one
line and a documented exit code, and leaves nothing half-written behind."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from acsl_cli.data.synthetic.lvis_like import SyntheticLvisSpec
from acsl_cli.data.synthetic.lvis_like import generate as generate_lvis
from acsl_cli.data.synthetic.shapes import SyntheticSpec, ensure_generated, generate
from acsl_cli.engine.loop import LossGuard
from acsl_cli.errors import TrainingDiverged
from tests.terminal import default_sigint
from tests.test_engine import TINY
from tests.test_lvis_eval import LVIS_SAMPLE, METRIC_KEYS, TOL, _lvis_api_reference

REPO = Path(__file__).resolve().parents[1]
ALL_LOSSES = "loss=acsl,bce,bags,seesaw,eql,eqlv2,federated,softmax_ce"
FSIZE_LIMIT = 4 << 20  # 4 MiB: the tiny benchmark fits, a detector checkpoint does not


def _child_setup(fsize: int | None = None):
    """Default SIGINT disposition (a background job starts with it ignored) and, with
    ``fsize``, a file-size limit whose SIGXFSZ is ignored, so that a write past it raises
    ``OSError(EFBIG)`` instead of killing the process."""

    def setup() -> None:
        default_sigint()
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return setup


def acsl(*args: str, cwd: Path, fsize: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "acsl_cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_child_setup(fsize))


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def leftovers(root: Path) -> list[str]:
    """Hidden partial folders and temp files anywhere under ``root`` (locks excepted)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if not p.name.endswith(".lock"))


def runs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "runs").glob("*")) if (root / "runs").exists() else []


# what a training run may print on stderr before it fails: where its live log is, and
# one line per ``schedule.log_every`` iterations
PROGRESS_LINE = re.compile(r"^(live log: \S+\.log|stage[12] it \d+/\d+ .*)$")


def one_error_line(err: str) -> str:
    """The one ``error:`` line that ends ``err``; every line before it is a progress line."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1]), err
    return lines[-1]


# --- 1. the loss guard ------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_guard_stops_a_non_finite_loss_at_the_first_iteration(value):
    with pytest.raises(TrainingDiverged, match=r"^stage 1: loss is .* at iteration 1 \(ep"):
        LossGuard("stage 1").check("", value, 0)


def test_guard_stops_a_lasting_50x_jump_after_100_steady_iterations_not_single_spikes():
    rng = np.random.default_rng(0)
    guard = LossGuard("stage 2")
    steady = (1.0 + 0.3 * rng.standard_normal(100)).clip(0.3)  # noisy, as batches are
    for it, v in enumerate(steady):
        guard.check("bce", float(v), it)
    median = float(np.sort(steady)[49])
    guard.check("bce", 50 * median, 100)  # one spike: no divergence
    guard.check("bce", median, 101)
    for it in range(102, 106):  # four in a row: still not
        guard.check("bce", 50 * median, it)
    guard.check("other", 50 * median, 106)  # each head is judged on its own values
    with pytest.raises(TrainingDiverged) as e:
        guard.check("bce", 50 * median, 106)
    message = str(e.value)
    assert message.startswith("stage 2, head bce: loss exploded to ")
    assert "at iteration 107 (epoch 1)" in message and "20 x its running median" in message
    assert "for 5 iterations in a row" in message


def test_guard_passes_the_bags_spike_that_stopped_a_real_run():
    """``acsl sweep dataset=synthetic_lvis seed=2 loss=bags 'loss.bins=[5]'``: a head with
    a five-instance tail group had one batch at 20.2x its median (3.808 against 0.1885) at
    iteration 761 and recovered; the guard stopped it before it looked for a second."""
    rng = np.random.default_rng(2)
    guard = LossGuard("stage 2")
    values = list(0.1885 * (1 + 0.2 * rng.standard_normal(760)).clip(0.5))
    values += [3.808, 0.21, 0.19, 0.5, 0.18]
    for it, v in enumerate(values):
        guard.check("bags_bins5", float(v), it)


def test_guard_stops_the_lr_1e6_divergence_at_its_second_iteration():
    # stage 2 of `acsl train schedule=smoke schedule.stage2.lr=1e6` (the probe's numbers)
    losses = [11.282, 4064.5, 2451547.0, 9582155776.0, 26898391040.0, 8988451143680.0]
    guard = LossGuard("stage 2")
    guard.check("acsl", losses[0], 0)
    with pytest.raises(TrainingDiverged, match=r"exploded to 4064 at iteration 2 .* 100 x"):
        guard.check("acsl", losses[1], 1)


def test_guard_passes_normal_early_training():
    # first iterations as smoke runs record them: falling fast, or rising a few-fold while
    # a new head settles (BAGS: x2.97); a zero median judges nothing
    for values in ([41.25, 12.3, 7.4, 7.0, 9.1, 8.2], [3.206, 9.52, 2.45, 4.1, 3.3],
                   [0.0, 0.3, 0.2, 0.4]):
        guard = LossGuard("stage 2")
        for it, v in enumerate(values):
            guard.check("h", v, it)


class _SpikeAt:
    """A real loss whose value is scaled to 50x its running median from iteration ``at``."""

    def __init__(self, loss: torch.nn.Module, at: int) -> None:
        self.loss, self.at, self.seen = loss, at, []

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        value = self.loss(logits, labels)
        if len(self.seen) >= self.at:
            median = sorted(self.seen[:self.at])[(self.at - 1) // 2]
            value = value * (50 * median / value.item())
        self.seen.append(value.item())
        return value

    def __getattr__(self, name: str):
        return getattr(self.loss, name)


def test_stage2_stops_a_head_whose_loss_stays_50x_up_after_100_iterations(tiny):
    from acsl_cli.engine.finetune_heads import finetune_heads, new_head
    from acsl_cli.engine.loaders import train_loader
    from acsl_cli.engine.schedule import StageSchedule
    from acsl_cli.models.trunk import FrozenTrunk
    from acsl_cli.pipeline.components import loss_context, make_loss
    from acsl_cli.settings import LossSettings

    _, data, model = tiny
    trunk = FrozenTrunk(copy.deepcopy(model))
    loss = make_loss(LossSettings("bce"), loss_context(data, 0))
    head = new_head("bce", loss, trunk.stage1_classifier, data.cmap.num_classes)
    head.losses[0] = _SpikeAt(head.loss, at=100)
    sched = StageSchedule(epochs=1000, lr=0.001, momentum=0.9, weight_decay=1e-4,
                          warmup_iters=0, warmup_ratio=1.0, steps=[], grad_clip=35.0)
    torch.manual_seed(0)
    with pytest.raises(TrainingDiverged, match=r"^stage 2, head bce: loss exploded .* "
                                               r"at iteration 105 .* 5 iterations in a row"):
        finetune_heads(trunk, [head], train_loader(data.train, 4, seed=5), sched, "cpu",
                       max_iters=110, show_progress=False, amp="off")
    assert len(head.loss.seen) == 105


def test_a_lr_1e6_smoke_run_exits_1_with_the_guards_line_and_saves_nothing(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *TINY, "schedule.stage2.lr=1e6", f"output_root={root}",
                             cwd=tmp_path))
    assert rc == 1, err[-2000:]
    line = one_error_line(err)
    assert line.startswith("error: stage 2, head acsl_xi0.7_bgofficial: loss exploded"), err
    assert runs(root) == [] and leftovers(root) == []
    assert list(root.glob("cache/stage1/*/checkpoint.pt"))  # the good stage 1 is kept


def test_no_loss_trips_the_guard_in_a_normal_smoke_run(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", "schedule=smoke", "progress=false", ALL_LOSSES,
                             "schedule.max_iters=25", f"output_root={root}", cwd=tmp_path))
    assert rc == 0, err[-2000:]
    (run,) = runs(root)
    assert len(list((root / "runs" / run / "heads").iterdir())) == 8


# --- 2. interrupted benchmark generation ------------------------------------------------

def _pngs_being_generated(root: Path) -> int:
    return sum(1 for _ in root.glob("cache/data/*synthetic-*.partial/train/*.png"))


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_generation_leaves_nothing(tmp_path, sig, code, word):
    root = tmp_path / "outputs"
    p = acsl("train", "schedule=smoke", "progress=false", f"output_root={root}", cwd=tmp_path)
    deadline = time.time() + 60  # generous: CI may share its cores with training runs
    while _pngs_being_generated(root) < 20 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert _pngs_being_generated(root) >= 20, "generation did not start"
    p.send_signal(sig)
    rc, _, err = finish(p, timeout=60)
    assert rc == code, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(word) and "Traceback" not in err
    assert leftovers(root) == [] and not list(root.glob("cache/data/synthetic*"))


def test_an_exception_during_generation_leaves_nothing(tmp_path):
    def fail_after(n: int):
        def tick(done: int, total: int) -> None:
            if done == n:
                raise RuntimeError("disk gone")
        return tick

    with pytest.raises(RuntimeError, match="disk gone"):
        generate(SyntheticSpec(num_classes=8, max_images_per_class=12), tmp_path / "a",
                 fail_after(5))
    with pytest.raises(RuntimeError, match="disk gone"):
        generate_lvis(SyntheticLvisSpec(seed=1, num_classes=60, max_images_per_class=110,
                                        val_instances_per_class=3), tmp_path / "b",
                      fail_after(5))
    assert list(tmp_path.iterdir()) == []


def test_a_sigkilled_generators_leftover_is_removed_by_the_next_generation(tmp_path):
    code = f"""
        from pathlib import Path
        from acsl_cli.data.synthetic.shapes import SyntheticSpec, ensure_generated
        def tick(done, total):
            if done == 10:
                print("generating", flush=True)
                import time; time.sleep(60)
        ensure_generated(SyntheticSpec(), Path({str(tmp_path)!r}), tick)
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True,
                         stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout.readline().strip() == "generating"
    (partial,) = tmp_path.iterdir()
    assert partial.name.endswith(".partial")
    p.kill()
    p.wait(timeout=60)
    folder = ensure_generated(SyntheticSpec(num_classes=8, max_images_per_class=12), tmp_path)
    assert [q.name for q in tmp_path.iterdir()] == [folder.name]


# --- 3. failed writes -------------------------------------------------------------------

WRITER = """
    from pathlib import Path
    import numpy as np
    import torch
    from acsl_cli.data.synthetic.shapes import SyntheticSpec, generate
    from acsl_cli.errors import AcslError
    from acsl_cli.files import atomic_write_json, atomic_write_text
    from acsl_cli.engine.checkpoint import save_state_file
    from acsl_cli.evaluation.openimages_predictions import write_predictions_csv
    out = Path({out!r})
    big = "x" * ({limit} + 1)
    n = {limit} // 10
    dets = ([str(i) for i in range(n)], ["/m/a"], np.arange(n), np.ones(n, int),
            np.full(n, 0.5), np.zeros((n, 4)))
    for write in (lambda: save_state_file(out / "c.pt", {{"w": torch.zeros({limit})}}),
                  lambda: atomic_write_json(out / "m.json", {{"rows": [big]}}),
                  lambda: atomic_write_text(out / "m.csv", big),
                  lambda: atomic_write_text(out / "config.yaml", big),
                  lambda: write_predictions_csv(out / "predictions.csv", *dets),
                  lambda: generate(SyntheticSpec(), out / "set")):
        try:
            write()
            print("written")
        except AcslError as e:
            print(f"{{type(e).__name__}}|{{e}}")
"""


def test_each_failed_write_is_one_line_naming_the_file_and_leaves_no_temp_file(tmp_path):
    limit = 200_000  # the default benchmark's train.json is ~850 kB, its PNGs ~1 kB
    p = subprocess.Popen([sys.executable, "-c",
                          textwrap.dedent(WRITER.format(out=str(tmp_path), limit=limit))],
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO)},
                         preexec_fn=_child_setup(limit))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    lines = out.strip().splitlines()
    names = ("c.pt", "m.json", "m.csv", "config.yaml", "predictions.csv", "train.json")
    assert len(lines) == len(names), out
    for name, line in zip(names, lines, strict=True):
        kind, message = line.split("|")
        assert kind == "WriteError" and message.endswith(": cannot write (File too large, EFBIG)")
        assert message.split(": cannot write")[0].endswith(name), line
    assert list(tmp_path.iterdir()) == []  # no temp file, no partial benchmark


def test_a_checkpoint_that_cannot_be_written_ends_train_with_one_line_and_exit_2(tmp_path):
    root = tmp_path / "outputs"
    rc, _, err = finish(acsl("train", *TINY, f"output_root={root}", cwd=tmp_path,
                             fsize=FSIZE_LIMIT))
    assert rc == 2, err[-2000:]
    line = one_error_line(err)
    assert ".pt: cannot write (File too large, EFBIG)" in line, line
    assert str(root / "cache" / "stage1") in line
    assert runs(root) == [] and leftovers(root) == []
    assert not list(root.glob("cache/stage1/*/checkpoint.pt"))


# --- 4 and 5. malformed results and JSON inputs -----------------------------------------

@pytest.fixture(scope="module")
def lvis_gt() -> dict:
    return json.loads(LVIS_SAMPLE.read_text())


def _dets(gt: dict) -> list[dict]:
    """Ten detections on real GT boxes (valid input)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": list(a["bbox"]), "score": 0.9 - 0.01 * i}
            for i, a in enumerate(gt["annotations"][:10])]


def _eval(tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = finish(acsl("eval", *args, cwd=tmp_path))
    created = sorted(set(p.name for p in tmp_path.iterdir()) - set(before))
    return rc, err, created


@pytest.mark.parametrize("side", [2, 3])
def test_a_negative_width_or_height_is_rejected_naming_the_entry(tmp_path, lvis_gt, side):
    dets = _dets(lvis_gt)
    dets[4]["bbox"][side] = -dets[4]["bbox"][side]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dets))
    rc, err, created = _eval(tmp_path, f"dets={path}", f"ann={LVIS_SAMPLE}",
                             f"out={tmp_path / 'm.json'}")
    assert rc == 2 and created == [], err
    line = one_error_line(err)
    assert line.startswith(f"error: {path}: detection 4 has bbox [") and "negative" in line


def test_zero_width_and_height_detections_score_as_lvis_api_does(lvis_gt, monkeypatch):
    from acsl_cli.evaluation import evaluate_lvis

    dets = _dets(lvis_gt)
    for i, (x, y, w, h) in enumerate(d["bbox"] for d in dets[:6]):
        dets.append({**dets[i], "bbox": [x, y, 0.0, h] if i % 2 else [x, y, w, 0.0],
                     "score": 0.95})  # outscore the good boxes: a zero box is a miss
    ref, ref_per_category = _lvis_api_reference(LVIS_SAMPLE, dets, monkeypatch)
    ours = evaluate_lvis(copy.deepcopy(lvis_gt), copy.deepcopy(dets))
    for key in METRIC_KEYS:
        if ref[key] == -1:
            assert math.isnan(ours.metrics[key]), key
        else:
            assert ours.metrics[key] == pytest.approx(ref[key], abs=TOL), key
    per_category = {r["category_id"]: r["AP"] for r in ours.per_category}
    for cat_id, ap in ref_per_category.items():
        assert per_category[cat_id] == pytest.approx(ap, abs=TOL), cat_id
    assert 0 < ours.metrics["AP"] < 1  # the zero-area boxes counted as false positives


HUGE = "9" * 5001


def _with_huge_number(obj: dict | list) -> str:
    """``obj`` as JSON text with a 5001-digit integer in its first entry (a key of its own)."""
    first = obj["annotations"][0] if isinstance(obj, dict) else obj[0]
    first["x"] = "HUGE"
    return json.dumps(obj).replace('"HUGE"', HUGE, 1)


@pytest.mark.parametrize("which", ["dets", "ann", "train_ann"])
def test_a_5001_digit_number_in_a_json_input_is_one_line_exit_2(tmp_path, lvis_gt, which):
    dets, ann = tmp_path / "results.json", tmp_path / "ann.json"
    dets.write_text(json.dumps(_dets(lvis_gt)))
    ann.write_text(LVIS_SAMPLE.read_text())
    victim = ann if which != "dets" else dets
    victim.write_text(_with_huge_number(json.loads(victim.read_text())))
    args = [f"dets={dets}", f"ann={LVIS_SAMPLE if which == 'train_ann' else ann}"]
    if which == "train_ann":
        args.append(f"train_ann={ann}")
    rc, err, created = _eval(tmp_path, *args, f"out={tmp_path / 'm.json'}")
    assert rc == 2 and created == [], err
    line = one_error_line(err)
    assert line.startswith(f"error: {victim}: ") and "4300 digits" in line, line


def test_a_5001_digit_number_in_a_saved_runs_json_is_one_line_exit_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"model": {"AP": ' + HUGE + "}}")
    before = sorted(p.name for p in run.iterdir())
    rc, _, err = finish(acsl("report", str(run), cwd=tmp_path))
    assert rc == 2, err
    line = one_error_line(err)
    assert line.startswith(f"error: {run / 'metrics.json'}: ") and "4300 digits" in line, line
    assert sorted(p.name for p in run.iterdir()) == before
