"""Samplers (repeat-factor, class-aware), aspect-ratio batches, worker seeding, resume,
and ``acsl data stats``, against hand-computed references."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler
from typer.testing import CliRunner

from acsl_cli.cli import app
from acsl_cli.data.samplers import (
    ClassAwareSampler,
    RepeatFactorSampler,
    make_sampler,
    repeat_factors,
    rfs_epoch_images,
)
from acsl_cli.data.stats import image_categories
from acsl_cli.data.transforms import RandomHorizontalFlip, Transformed
from acsl_cli.engine.loaders import GroupedBatchSampler, loader_generators, train_loader
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.errors import DataError
from tests.ddp_samplers import CATEGORIES as DDP_CATEGORIES
from tests.test_engine import TINY

# ---------------------------------------------------------------- repeat factors


def test_repeat_factors_hand_computed():
    # t = 0.5 over 5 images: f1 = 4/5 -> r1 = 1 (sqrt(0.625) < 1); f2 = 1/5 -> sqrt(2.5);
    # f3 = 2/5 -> sqrt(1.25); the image without annotations keeps r = 1; a duplicated
    # category in one image counts once
    cats = [[1, 2], [1], [1, 3, 3], [1, 3], []]
    r2, r3 = math.sqrt(2.5), math.sqrt(1.25)
    assert repeat_factors(cats, 0.5) == pytest.approx([r2, 1.0, r3, r3, 1.0], abs=1e-12)
    assert rfs_epoch_images(cats, 0.5) == pytest.approx(2 + r2 + 2 * r3, abs=1e-12)
    # a category in every image has f = 1: repeated only when t > 1
    every = [[7], [7, 8], [7]]
    assert repeat_factors(every, 0.5) == pytest.approx([1.0, math.sqrt(1.5), 1.0])
    assert repeat_factors(every, 4.0) == pytest.approx([2.0, math.sqrt(12.0), 2.0])


def test_rfs_stochastic_rounding_has_the_right_expectation():
    repeat = [1.0, 1.25, 2.5, 3.0]
    sampler = RepeatFactorSampler(repeat, seed=0)
    assert len(sampler) == round(sum(repeat)) == 8
    epochs = 2000
    counts = [Counter(sampler.epoch_indices()) for _ in range(epochs)]
    for i, r in enumerate(repeat):
        per_epoch = {c[i] for c in counts}
        assert per_epoch <= {math.floor(r), math.ceil(r)}, i  # floor or floor + 1 only
        mean = sum(c[i] for c in counts) / epochs
        # std of the mean of Bernoulli(0.5) over 2000 epochs is 0.011
        assert mean == pytest.approx(r, abs=0.045), i
    # the order is shuffled: index 3 (3 copies) is not always first
    assert len({tuple(sampler.epoch_indices()) for _ in range(20)}) > 1


def test_class_aware_frequencies():
    # classes: 1 in images 0-3, 2 in image 4, 3 in images 4 and 5; image 6 has none.
    # P(image) = sum over its classes of 1/3 * 1/|class|
    cats = [[1], [1], [1], [1], [2, 3], [3], []]
    expected = [1 / 12] * 4 + [1 / 3 + 1 / 6, 1 / 6, 0.0]
    sampler = ClassAwareSampler(cats, seed=1)
    assert len(sampler) == 7  # as many draws as images
    draws = Counter(i for _ in range(4000) for i in sampler.epoch_indices())
    n = sum(draws.values())
    assert draws[6] == 0
    chi2 = sum((draws[i] - n * p) ** 2 / (n * p) for i, p in enumerate(expected) if p)
    assert chi2 < 20.5  # 5 degrees of freedom: p = 0.001


def test_samplers_are_seeded_and_epochs_differ():
    a, b = (RepeatFactorSampler.from_categories(DDP_CATEGORIES, 0.9, seed=3) for _ in "ab")
    first, second = list(a), list(a)
    assert first == list(b) and second == list(b)
    assert first != second
    with pytest.raises(ValueError, match="annotated"):
        ClassAwareSampler([[], []])
    assert make_sampler("random", DDP_CATEGORIES, 0) is None
    with pytest.raises(DataError, match="sampler=class_aware"):
        make_sampler("class_aware", [[], []], 0)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_the_epoch_list_once(world):
    """Rank r takes positions r, r + W, ... of the epoch list padded by wrapping."""
    ref = ClassAwareSampler(DDP_CATEGORIES, seed=2)
    shards = [ClassAwareSampler(DDP_CATEGORIES, seed=2, num_replicas=world, rank=r)
              for r in range(world)]
    for _ in range(2):
        full = ref.epoch_indices()
        per_rank = math.ceil(len(full) / world)
        padded = (full * 2)[: per_rank * world]
        got = [list(s) for s in shards]
        assert all(len(g) == per_rank == len(s) for g, s in zip(got, shards, strict=True))
        merged = [got[p % world][p // world] for p in range(per_rank * world)]
        assert merged == padded


def test_samplers_under_torchrun(tmp_path):
    """Two processes: each rank's share of every epoch, merged, is the epoch list of one
    process with the same seed, each position exactly once; batch counts agree."""
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(here / "ddp_samplers.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=here.parent, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(here.parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    refs = {"rfs": RepeatFactorSampler.from_categories(DDP_CATEGORIES, t=0.9, seed=4),
            "class_aware": ClassAwareSampler(DDP_CATEGORIES, seed=4)}
    for name, ref in refs.items():
        for epoch in range(3):
            full = ref.epoch_indices()
            per_rank = math.ceil(len(full) / 2)
            padded = (full * 2)[: 2 * per_rank]
            if epoch < 2:
                got = [r[name]["epochs"][epoch] for r in ranks]
            else:  # the third epoch went through train_loader in batches of 2
                got = [[i for b in r[name]["batches"] for i in b] for r in ranks]
            assert len(got[0]) == len(got[1]) == per_rank, (name, epoch)
            assert got[0] + got[1] == padded[0::2] + padded[1::2], (name, epoch)
        assert ranks[0][name]["loader_len"] == ranks[1][name]["loader_len"]
        assert len(ranks[0][name]["batches"]) == len(ranks[1][name]["batches"])


# ---------------------------------------------------------------- batches and workers


def test_grouped_batches_keep_orientations_apart():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]  # 6 landscape, 5 portrait
    order = [3, 1, 4, 0, 2, 5, 7, 9, 6, 10, 8]
    # portrait fills first (at 7); the leftovers 6, 10, 8 fit one (mixed) batch
    batches = list(GroupedBatchSampler(order, groups, 4))
    assert batches == [[1, 4, 5, 7], [3, 0, 2, 9], [6, 10, 8]]
    assert len(batches) == len(GroupedBatchSampler(order, groups, 4)) == math.ceil(11 / 4)
    # leftovers of 3 + 2 do not fit one batch: one batch per orientation
    assert list(GroupedBatchSampler([0, 3, 1, 4, 2], [0, 0, 0, 1, 1], 4)) == [
        [0, 1, 2], [3, 4]]
    assert list(GroupedBatchSampler(order, [0] * 11, 4)) == [order[:4], order[4:8], order[8:]]


def test_default_loader_batches_are_those_of_a_plain_loader(tiny):  # noqa: F811
    _, data, _ = tiny
    assert {(im["width"], im["height"]) for im in data.train.images} == {(128, 128)}
    loader = train_loader(data.train, 4, seed=5)
    plain = DataLoader(data.train, batch_size=4, collate_fn=lambda b: b,
                       sampler=RandomSampler(data.train,
                                             generator=torch.Generator().manual_seed(5)))
    assert isinstance(loader.sampler, RandomSampler) and len(loader) == len(plain)
    for _ in range(2):
        ours = [[int(t["image_id"]) for t in targets] for _, targets in loader]
        theirs = [[int(t["image_id"]) for _, t in batch] for batch in plain]
        assert ours == theirs


def _flipped_batches(data, workers: int, epochs: int = 2):
    flip = RandomHorizontalFlip(0.5, seed=3)
    loader = train_loader(Transformed(data.train, flip), 4, seed=5, workers=workers)
    assert loader_generators(loader) == [flip.generator, loader.sampler.generator]
    return [[(int(t["image_id"]), float(t["boxes"][0, 0]) if len(t["boxes"]) else -1.0)
             for t in targets] for _ in range(epochs) for _, targets in loader]


def test_worker_flips_do_not_depend_on_the_number_of_workers(tiny):  # noqa: F811
    _, data, _ = tiny
    one, two = _flipped_batches(data, 1), _flipped_batches(data, 2)
    assert one == two
    assert one[: len(one) // 2] != one[len(one) // 2:]  # epochs differ


# ---------------------------------------------------------------- resume


def test_stage1_with_rfs_resumes_exactly(tiny, tmp_path):  # noqa: F811
    """Two epochs in one go == one epoch, stop, resume: same order, flips and weights."""
    from acsl_cli.engine.train_detector import train_detector

    cfg, data, model0 = tiny
    cats = image_categories(data.train.data)
    sched = StageSchedule(epochs=2, lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=0,
                          warmup_ratio=1.0, steps=[], grad_clip=35.0)
    seen: list[list[int]] = []

    def fresh(resume, epochs):
        torch.manual_seed(7)
        flip = RandomHorizontalFlip(0.5, seed=3)
        sampler = RepeatFactorSampler.from_categories(cats, t=0.3, seed=5)
        loader = train_loader(Transformed(data.train, flip), 4, seed=5, sampler=sampler)
        gens = loader_generators(loader)
        assert gens == [flip.generator, sampler.generator]
        s = StageSchedule(**{**sched.__dict__, "epochs": epochs})
        seen.clear()
        draw = sampler.epoch_indices  # record each epoch's order as it is drawn
        sampler.epoch_indices = lambda: seen.append(draw()) or seen[-1]
        return train_detector(model, loader, s, "cpu", None, False, resume, gens, amp="off")

    assert max(repeat_factors(cats, 0.3)) > 1.5  # the tiny set's rare images do repeat
    model = copy.deepcopy(model0)
    straight = fresh(None, 2)
    orders = list(seen)
    w_straight = copy.deepcopy(model.state_dict())
    resume = tmp_path / "stage1.resume.pt"
    model = copy.deepcopy(model0)
    fresh(resume, 1)
    torch.manual_seed(999)
    model = copy.deepcopy(model0)
    both = fresh(resume, 2)
    assert seen == orders[1:]  # the resumed run drew epoch 2's order, the same one
    assert [h["loss"] for h in both] == pytest.approx([h["loss"] for h in straight], rel=1e-5)
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), w_straight[k].float(), atol=1e-5), k


# ---------------------------------------------------------------- end to end and stats


def test_train_smoke_with_rfs(tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["train", *TINY, "sampler=rfs", "sampler.t=0.3",
                                   f"output_root={tmp_path / 'o'}", f"out={out}"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(out.read_text())) >= {"AP", "APr", "APc", "APf"}
    run = next((tmp_path / "o" / "runs").iterdir())
    assert "name: rfs" in (run / "config.yaml").read_text()
    bad = CliRunner().invoke(app, ["train", *TINY, "sampler=rfs", "sampler.t=-1",
                                   f"output_root={tmp_path / 'o'}"])
    assert bad.exit_code == 2 and "sampler.t=-1" in bad.output


def _tiny_file(path: Path) -> Path:
    """4 images (ids out of order, one without annotations), 3 categories (one unseen)."""
    box = [0, 0, 2, 2]
    anns = [(1, 10), (1, 10), (1, 20), (2, 10), (3, 10)]
    path.write_text(json.dumps({
        "images": [{"id": i} for i in (3, 1, 2, 4)],
        "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}, {"id": 30}],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": box}
                        for k, (i, c) in enumerate(anns)],
    }))
    return path


def test_data_stats_hand_computed(tmp_path):
    ann, out = _tiny_file(tmp_path / "train.json"), tmp_path / "stats.json"
    res = CliRunner().invoke(app, ["data", "stats", f"ann={ann}", "sampler.t=0.5",
                                   f"out={out}"])
    assert res.exit_code == 0, res.output
    stats = json.loads(out.read_text())
    assert tuple(stats) == ("num_images", "num_instances", "num_categories", "groups",
                            "never_in_train", "rfs_t", "rfs_epoch_images", "categories")
    # f10 = 3/4 -> r = 1; f20 = 1/4 -> r = sqrt(2) for image 1; images 2, 3, 4 keep 1
    assert stats == {
        "num_images": 4, "num_instances": 5, "num_categories": 3,
        "groups": {"r": 3, "c": 0, "f": 0}, "never_in_train": [30], "rfs_t": 0.5,
        "rfs_epoch_images": pytest.approx(3 + math.sqrt(2), abs=1e-12),
        "categories": [
            {"id": 10, "name": "a", "group": "r", "image_count": 3, "instance_count": 4},
            {"id": 20, "name": "b", "group": "r", "image_count": 1, "instance_count": 1},
            {"id": 30, "name": "30", "group": "r", "image_count": 0, "instance_count": 0},
        ],
    }
    bad = CliRunner().invoke(app, ["data", "stats", f"ann={ann}", "sampler=class_aware"])
    assert bad.exit_code == 2 and "sampler=rfs" in bad.output
    missing = CliRunner().invoke(app, ["data", "stats", f"ann={tmp_path / 'nope.json'}"])
    assert missing.exit_code == 2 and "nope.json" in missing.output


def test_data_stats_embedded_benchmark(tmp_path):
    out = tmp_path / "stats.json"
    res = CliRunner().invoke(app, ["data", "stats", f"output_root={tmp_path / 'o'}",
                                   "progress=false", f"out={out}"])
    assert res.exit_code == 0, res.output
    stats = json.loads(out.read_text())
    assert (stats["num_images"], stats["num_instances"], stats["num_categories"]) == (
        1033, 4131, 60)
    assert stats["groups"] == {"r": 24, "c": 22, "f": 14} and stats["never_in_train"] == []
    # t = 0.001: only categories in fewer than 1.033 images repeat, i.e. those in one
    # image, each by sqrt(0.001 / (1 / 1033)); every other image counts 1
    ones = {c["id"] for c in stats["categories"] if c["image_count"] == 1}
    train = json.loads(next((tmp_path / "o").glob("cache/data/*/train.json")).read_text())
    repeated = {a["image_id"] for a in train["annotations"] if a["category_id"] in ones}
    assert len(ones) == 4 and stats["rfs_t"] == 0.001
    assert stats["rfs_epoch_images"] == pytest.approx(
        1033 + len(repeated) * (math.sqrt(1.033) - 1), abs=1e-9)
