"""ACSL's suppression record (the paper's Figure 3 on real runs) and its report section.

References: counts worked out by hand from the equations, and W read back from the loss's
own gradient (W = 1 exactly where an off-target gradient is non-zero, eq. 7), never from
the recording code itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acsl_cli.errors import DataError
from acsl_cli.losses import LossContext, acsl_record, build_loss
from acsl_cli.reporting.report import write_report
from acsl_cli.reporting.runs import TrainCounts, load_runs
from acsl_cli.reporting.suppression import (
    SUPPRESSION_FILE,
    Suppression,
    lookalikes_markdown,
    read_suppression,
    write_suppression,
)
from tests.test_losses import frequencies_for, loss_and_grad, random_batch

TINY = ["dataset.num_classes=8", "dataset.max_images_per_class=12",
        "dataset.val_instances_per_class=2", "schedule=smoke", "progress=false"]


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_record_by_hand_over_two_calls(bg_mode):
    # xi = 0.5; columns 0 (background), 1, 2, 3. Call 1:
    #   RoI of class 1, p = [0.9, 0.8, 0.6, 0.1]: columns 0 and 2 suppressed; column 0 is
    #     background, left out -> cell (1, 2)
    #   RoI of class 2, p = [0.1, 0.7, 0.9, 0.5]: columns 1 and 3 (p == xi counts) -> (2, 1), (2, 3)
    #   background RoI, p = [0.9, 0.9, 0.9, 0.9]: not recorded whatever its W
    # Call 2: RoI of class 1, p = [0.1, 0.9, 0.2, 0.7]: column 3 -> (1, 3)
    rows = [[0.9, 0.8, 0.6, 0.1], [0.1, 0.7, 0.9, 0.5], [0.9, 0.9, 0.9, 0.9]]
    z1 = torch.tensor([[logit(p) for p in r] for r in rows], dtype=torch.float64)
    z2 = torch.tensor([[logit(p) for p in (0.1, 0.9, 0.2, 0.7)]], dtype=torch.float64)
    loss = build_loss("acsl", xi=0.5, bg_mode=bg_mode, frequencies=["f", "c", "r"])
    assert loss.suppression() is None  # nothing trained yet
    loss(z1, torch.tensor([1, 2, 0]))
    loss(z2, torch.tensor([1]))
    counts, rois = loss.suppression()
    assert counts.dtype == rois.dtype == torch.int64
    assert counts.tolist() == [[0, 1, 1], [1, 0, 1], [0, 0, 0]]
    assert rois.tolist() == [2, 1, 0]


def test_eval_mode_records_nothing():
    loss = build_loss("acsl", xi=0.5, bg_mode="adaptive").eval()
    logits, labels = random_batch(40, 5, seed=1)
    loss(logits, labels)
    assert loss.suppression() is None
    loss.train()
    loss(logits, labels)
    assert int(loss.suppression()[1].sum()) == int((labels > 0).sum())


@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_record_is_w_read_from_the_gradient(bg_mode):
    """Over batches with hundreds of background RoIs (official draws active), the record
    equals the off-target non-zero gradient of the foreground rows, counted by a loop."""
    c = 9
    loss = build_loss("acsl", xi=0.6, bg_mode=bg_mode, frequencies=frequencies_for(c), seed=3)
    expected = np.zeros((c, c), dtype=np.int64)
    rois = np.zeros(c, dtype=np.int64)
    for call in range(3):
        logits, labels = random_batch(400, c, seed=20 + call, fg_fraction=0.3)
        _, grad = loss_and_grad(loss, logits, labels)
        for i, k in enumerate(labels.tolist()):
            if k == 0:
                continue
            rois[k - 1] += 1
            for j in range(1, c + 1):
                if j != k and grad[i, j] != 0:
                    expected[k - 1, j - 1] += 1
    counts, got_rois = loss.suppression()
    assert expected.sum() > 50  # the batch really suppresses something
    np.testing.assert_array_equal(counts.numpy(), expected)
    np.testing.assert_array_equal(got_rois.numpy(), rois)


def reference_record(batches, xi: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The record as it was kept before it was made cheap (commit a37b46f), written plainly:
    per foreground RoI of class k, +1 on (k, j) for every column j != k whose p (in the
    logits' dtype) is >= xi, +1 on the RoIs of k; a background RoI adds to rois[0] only.
    The full (W, W) matrix, background row and column included, as ``state_dict`` keeps it."""
    counts = np.zeros((width, width), dtype=np.int64)
    rois = np.zeros(width, dtype=np.int64)
    for logits, labels in batches:
        p = torch.sigmoid(logits)
        high = (p >= torch.tensor(xi, dtype=logits.dtype)).numpy()
        for i, k in enumerate(labels.tolist()):
            rois[k] += 1
            if k == 0:
                continue
            for j in np.flatnonzero(high[i]):
                if j != k:
                    counts[k, j] += 1
    return counts, rois


@pytest.mark.parametrize("pending_limit", [None, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_record_equals_the_plain_reference_over_random_batches(bg_mode, dtype, pending_limit,
                                                               monkeypatch):
    """The CPU record (the kept entries of the foreground rows, added in one go when read or
    when they pile up: ``pending_limit`` 1 adds every call at once) gives exactly the
    counts of the plain definition, cell for cell, over several calls on an LVIS-like long
    tail with hundreds of background RoIs per batch (official draws on), batch sizes
    varying, a read in between, and both rules; the loss value and gradient stay those of
    the eval-mode (not recording) loss."""
    if pending_limit is not None:
        monkeypatch.setattr(acsl_record, "PENDING_LIMIT", pending_limit)
    c = 120
    width = c + 1
    g = torch.Generator().manual_seed(7)
    rank = torch.randperm(c, generator=g).double()
    images = torch.exp(math.log(20000.0) * (1.0 - rank / (c - 1))).round().long().tolist()
    freqs = ["r" if n <= 10 else "c" if n <= 100 else "f" for n in images]
    loss = build_loss("acsl", xi=0.6, bg_mode=bg_mode, frequencies=freqs, seed=11)
    twin = build_loss("acsl", xi=0.6, bg_mode=bg_mode, frequencies=freqs, seed=11).eval()
    batches = []
    for call in range(5):
        n = 600 + 97 * call
        logits = (torch.randn(n, width, generator=g, dtype=torch.float64) * 2.5 - 2.0).to(dtype)
        labels = torch.randint(1, width, (n,), generator=g)
        labels[torch.rand(n, generator=g) > 0.3] = 0
        batches.append((logits, labels))
        value, grad = loss_and_grad(loss, logits, labels)
        value_ref, grad_ref = loss_and_grad(twin, logits, labels)
        assert torch.equal(value, value_ref) and torch.equal(grad, grad_ref)
        if call == 2:  # a read on the way (a checkpoint) adds what is pending
            counts, rois = reference_record(batches, 0.6, width)
            np.testing.assert_array_equal(loss.suppression()[0].numpy(), counts[1:, 1:])
    counts, rois = reference_record(batches, 0.6, width)
    state = loss.state_dict()
    assert counts.sum() > 1000 and counts[0].sum() == 0
    np.testing.assert_array_equal(state["suppression_counts"].numpy(), counts)
    np.testing.assert_array_equal(state["suppression_rois"].numpy(), rois)


def test_record_under_a_hierarchy_leaves_ancestors_out():
    # class 2's ancestor is class 1: for a RoI of class 2, column 1 is a target, not a
    # suppression. xi = 0.5, p = [0.1, 0.9, 0.8, 0.7] -> only column 3 is suppressed.
    context = LossContext(num_classes=3, frequencies=("f", "c", "r"), ancestors=((), (1,), ()))
    loss = build_loss("acsl", context, xi=0.5)
    z = torch.tensor([[logit(p) for p in (0.1, 0.9, 0.8, 0.7)]], dtype=torch.float64)
    loss(z, torch.tensor([2]))
    counts, rois = loss.suppression()
    assert counts.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]] and rois.tolist() == [0, 1, 0]


def test_record_resumes_through_state_dict_and_is_never_required():
    """Stage 2's resume file keeps each loss's state_dict: the record continues from it;
    a module holding an ACSL loss still loads a state dict without it, strictly."""
    z = torch.tensor([[logit(p) for p in (0.1, 0.2, 0.9)]], dtype=torch.float64)
    first = build_loss("acsl", xi=0.5, bg_mode="adaptive")
    assert first.state_dict() == {}  # nothing recorded, nothing saved
    first(z, torch.tensor([1]))
    resumed = build_loss("acsl", xi=0.5, bg_mode="adaptive")
    resumed.load_state_dict(first.state_dict())
    resumed(z, torch.tensor([1]))
    counts, rois = resumed.suppression()
    assert counts.tolist() == [[0, 2], [0, 0]] and rois.tolist() == [2, 0]
    assert first.suppression()[1].tolist() == [1, 0]  # not shared with the copy
    holder = torch.nn.ModuleDict({"cls_loss": resumed})
    holder.load_state_dict({})  # strict: the record is never a missing key


def test_write_and_read_back_without_pickle(tmp_path):
    loss = build_loss("acsl", xi=0.5, bg_mode="adaptive")
    z = torch.tensor([[logit(p) for p in (0.1, 0.2, 0.9)]], dtype=torch.float64)
    loss(z, torch.tensor([1]))
    write_suppression(tmp_path, loss, [11, 22])
    with np.load(tmp_path / SUPPRESSION_FILE, allow_pickle=False) as f:
        assert sorted(f.files) == ["category_ids", "counts", "rois"]
        assert f["counts"].tolist() == [[0, 1], [0, 0]] and f["rois"].tolist() == [1, 0]
    rec = read_suppression(tmp_path / SUPPRESSION_FILE)
    assert rec.category_ids.tolist() == [11, 22]
    rates = rec.rates()
    assert rates[0, 1] == 1.0 and np.isnan(rates[0, 0]) and np.isnan(rates[1]).all()
    write_suppression(tmp_path / "bce", build_loss("bce"), [11, 22])  # no record: no file
    assert not (tmp_path / "bce").exists()


@pytest.mark.parametrize("arrays, expect", [
    ({"category_ids": [1, 2], "counts": [[0, 1]], "rois": [1, 1]}, "integer arrays"),
    ({"category_ids": [1], "counts": [[-1]], "rois": [1]}, "non-negative"),
    ({"category_ids": [1, 2], "counts": [[0, 3], [0, 0]], "rois": [2, 0]}, "more often"),
    ({"counts": [[0]], "rois": [1]}, "not a suppression record"),
])
def test_bad_records_are_one_line(tmp_path, arrays, expect):
    path = tmp_path / SUPPRESSION_FILE
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(DataError, match=expect) as err:
        read_suppression(path)
    assert "\n" not in str(err.value)
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a suppression record"):
        read_suppression(path)


def test_lookalikes_table_by_hand():
    # class 30 (rare, 2 train images) had 10 RoIs: column of class 10 suppressed 4 times,
    # class 20 once. Class 20 (common) is not listed; class 10 (rare) had no RoIs.
    rec = Suppression(np.array([10, 20, 30]), np.array([[0, 0, 0], [5, 0, 1], [4, 1, 0]]),
                      np.array([0, 8, 10]))
    counts = TrainCounts({10: 1, 20: 50, 30: 2}, {10: "r", 20: "c", 30: "r"}, Path("x"))
    md = lookalikes_markdown({"acsl xi=0.7": rec}, counts, {10: "cat", 20: "dog", 30: "fox"})
    lines = md.strip().splitlines()
    assert len(lines) == 3
    assert lines[2] == "| acsl xi=0.7 | fox | 2 | 10 | cat 40.0 %, dog 10.0 % |"


@pytest.fixture(scope="module")
def acsl_run(tmp_path_factory):
    from acsl_cli.pipeline.train import run_train

    root = tmp_path_factory.mktemp("o")
    # two protocols: the [fixed] row has the same head, whose record is drawn once
    return run_train([*TINY, f"output_root={root}", "loss=acsl", "xi=0.3",
                      "test.protocol=[standard,fixed]", "test.dets_per_class=40"])


def test_a_trained_acsl_head_keeps_its_record_and_the_report_draws_it(acsl_run, tmp_path):
    head = next((acsl_run.run_dir / "heads").iterdir())
    rec = read_suppression(head / SUPPRESSION_FILE)
    assert len(rec.category_ids) == 8 and rec.rois.sum() > 0 and rec.counts.sum() > 0
    runs = load_runs([acsl_run.run_dir])
    paths = write_report(runs, tmp_path)
    assert tmp_path / "suppression.png" in paths
    with Image.open(tmp_path / "suppression.png") as im:
        assert im.format == "PNG" and im.size[0] >= 600
    md = (tmp_path / "report.md").read_text()
    assert "## ACSL suppression (Figure 3)" in md and "(suppression.png)" in md
    drawn = json.loads((tmp_path / "suppression.json").read_text())
    assert list(drawn) == ["acsl xi=0.3 bg=official"]
    # every listed share is the record's own count over the class's RoIs
    row_of = {cat.name: rec.category_ids.tolist().index(cat.category_id)
              for cat in runs[0].categories}
    section = md.split("## ACSL suppression (Figure 3)")[1]
    listed = [line for line in section.splitlines() if line.startswith("| acsl")]
    for line in listed:
        _, name, _, n_rois, columns = (c.strip() for c in line.strip("|").split("|"))
        i = row_of[name]
        assert int(n_rois) == rec.rois[i] > 0
        for part in filter(lambda p: p != "none", columns.split(", ")):
            other, share, _ = part.rsplit(" ", 2)
            assert share == f"{100 * rec.counts[i, row_of[other]] / rec.rois[i]:.1f}"


def test_classes_sorted_by_train_images_and_a_large_map_draws(tmp_path):
    from acsl_cli.reporting.suppression import _rare_rows, class_order
    from acsl_cli.reporting.suppression_figure import suppression_figure

    rng = np.random.default_rng(0)
    c = 60
    ids = np.arange(100, 100 + c)
    rois = rng.integers(0, 50, c)
    counts = np.minimum(rng.integers(0, 50, (c, c)), rois[:, None])
    np.fill_diagonal(counts, 0)
    rec = Suppression(ids, counts, rois)
    images = {int(i): int(n) for i, n in zip(ids, rng.permutation(c) + 1, strict=True)}
    train = TrainCounts(images, {int(i): "r" for i in ids}, Path("x"))
    order = class_order(rec, train)
    assert [images[int(ids[i])] for i in order] == sorted(images.values(), reverse=True)
    # without train counts: by RoIs, most first
    assert [int(rois[i]) for i in class_order(rec, None)] == sorted(rois.tolist(), reverse=True)
    path = suppression_figure({"a": rec, "b": rec}, train, {}, tmp_path / "s.png",
                              rare_rows=_rare_rows, class_order=class_order)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 600


def test_the_claims_numbers_by_hand():
    """Class 1 looks like class 2 (colour only); class 3 like neither. Class 1 (10 RoIs)
    suppressed class 2's column 6 times and class 3's twice: its top column is a look-alike;
    class 2 (5 RoIs) suppressed class 3's 3 times, class 1's once: not; class 3 had none."""
    from acsl_cli.reporting.lookalikes import summary

    rec = Suppression(np.array([1, 2, 3]), np.array([[0, 6, 2], [1, 0, 3], [0, 0, 0]]),
                      np.array([10, 5, 0]))
    traits = {1: ("circle", "red", "plain"), 2: ("circle", "blue", "plain"),
              3: ("square", "green", "dots")}
    s = summary(rec, traits)
    assert s["columns_per_roi"] == pytest.approx(12 / 15)
    assert (s["classes_with_rois"], s["classes_suppressing"], s["top_column_is_lookalike"]) \
        == (2, 2, 1)
    assert s["lookalike_columns_per_class"] == pytest.approx(0.67)
    assert s["lookalike_share_of_columns"] == pytest.approx(round(2 / 3 / 2, 4))
    assert "top_column_is_lookalike" not in summary(rec, {})
