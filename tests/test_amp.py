"""Mixed precision (amp=off|bf16|fp16) and the sync-free forms of the losses.

Losses must reduce in float32 whatever the logits' dtype (a float16 sum over LVIS-size
batches overflows), the training steps must run under autocast, fp16 must carry its
gradient scaler through resume, and the vectorised / sync-free loss forms must give the
values of the formulations they replace.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, available_losses, build_loss
from acsl_cli.models.trunk import FrozenTrunk
from tests.conftest import TINY
from tests.test_losses import loss_and_grad

C, N = 1230, 8192


def long_tail_context(c: int = C, seed: int = 0) -> LossContext:
    """LVIS-like statistics: image counts log-linear from 20,000 down to 1."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(c, generator=g).double()
    counts = torch.exp(math.log(20000.0) * (1.0 - rank / max(c - 1, 1))).round().long()
    images = tuple(counts.tolist())
    freqs = tuple("r" if n <= 10 else "c" if n <= 100 else "f" for n in images)
    return LossContext(num_classes=c, seed=seed, frequencies=freqs, image_counts=images,
                       instance_counts=tuple(2 * n for n in images), num_images=57000)


def lvis_batch(width: int, seed: int = 0, n: int = N, c: int = C):
    """Logits up to |z| ~ 30 (float32) and labels, 25 % foreground."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, width, generator=g) * 6.0 - 4.0).clamp(-30.0, 30.0)
    labels = torch.randint(1, c + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= 0.25] = 0
    return logits, labels


# ------------------------------------------------------------------ half-precision logits


@pytest.fixture(scope="module")
def fp32_reference():
    """Per loss: the float32 logits, labels and value that half inputs must come close to."""
    context, out = long_tail_context(), {}
    for name in available_losses():
        loss = build_loss(name, context)
        logits, labels = lvis_batch(loss.num_outputs(C))
        value, _ = loss_and_grad(loss, logits, labels)
        out[name] = (logits, labels, value)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", available_losses())
def test_loss_reduces_in_float32_at_lvis_size(name, dtype, fp32_reference):
    logits, labels, ref = fp32_reference[name]
    loss = build_loss(name, long_tail_context())  # fresh: same seed, same draws
    value, grad = loss_and_grad(loss, logits.to(dtype), labels)
    assert value.dtype == torch.float32 and math.isfinite(value.item()), (name, value)
    assert value.item() == pytest.approx(ref.item(), rel=1e-2)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    # scores: finite, and those of the rounded logits (rounding itself moves a softmax over
    # logits ~30 by a few percent; scoring must add nothing on top)
    rounded = logits[:64].to(dtype)
    scores = loss.scores(rounded)
    assert torch.isfinite(scores).all()
    assert torch.allclose(scores.float(), loss.scores(rounded.float()), atol=1e-3)


def test_upcast_keeps_full_precision_tensors():
    from acsl_cli.losses.common import upcast

    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(2, dtype=dtype)
        assert upcast(x) is x
    assert upcast(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32


# ------------------------------------------------------------------ sync-free loss forms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_acsl_dense_form_equals_gathered_form(bg_mode, dtype):
    """Both forms, run side by side on the same draws (generators seeded alike): the same
    value to rounding, the same gradient and the same suppression record; the loss itself
    (CPU: gathered) gives the gathered result."""
    from acsl_cli.losses.acsl_forms import (
        dense_background,
        fused_acsl,
        gathered_background,
        group_masks,
        threshold_below,
    )
    from acsl_cli.losses.common import frequency_columns

    context = long_tail_context(300)
    columns = frequency_columns("acsl", context.frequencies)
    masks = group_masks(columns, 301)
    loss = build_loss("acsl", context, bg_mode=bg_mode, xi=0.5, seed=4)
    gens = [torch.Generator().manual_seed(4) for _ in range(2)]
    records = [(torch.zeros(301, 301, dtype=torch.long), torch.zeros(301, dtype=torch.long))
               for _ in range(2)]
    for call in range(3):  # the draws stay aligned over calls
        logits, labels = lvis_batch(301, seed=call, n=2048, c=300)
        logits = (logits / 3).to(dtype)
        official = bg_mode == "official"
        backgrounds = (gathered_background(labels, gens[0], columns) if official else None,
                       dense_background(labels, gens[1], masks) if official else None)
        results = [loss_and_grad(
            lambda z, y, f=form, b=b, r=r: fused_acsl(z, y, threshold_below(0.5, dtype), b,
                                                      f, r), logits, labels)
            for form, b, r in zip(("gathered", "dense"), backgrounds, records, strict=True)]
        (v0, g0), (v1, g1) = results
        assert v1.item() == pytest.approx(v0.item(), rel=1e-6, abs=0)
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-12)
        v, g = loss_and_grad(loss, logits, labels)
        assert torch.equal(v, v0) and torch.equal(g, g0)
    # background row 0 is recorded by the dense form only; the foreground rows agree
    assert torch.equal(records[0][0][1:], records[1][0][1:])
    assert torch.equal(records[0][1], records[1][1])
    counts, rois = loss.suppression()
    assert torch.equal(counts, records[0][0][1:, 1:]) and torch.equal(rois, records[0][1][1:])
    assert counts.sum() > 0


def bags_loop(loss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BAGS as written before vectorising: nonzero() per group, in group order."""
    sizes = [stop - start for start, stop in loss.group_slices]
    blocks = logits.split(sizes, dim=1)
    total = F.cross_entropy(blocks[0], (labels > 0).long())
    groups = loss.group_of_label(labels)
    local = loss.label_local[labels]
    for k in range(1, loss.num_groups):
        is_pos = groups == k
        pos = is_pos.nonzero().squeeze(1)
        if pos.numel() == 0:
            continue
        available = (~is_pos).nonzero().squeeze(1)
        n_sample = loss.others_sample_size(pos.numel(), available.numel())
        pick = torch.randperm(available.numel(), generator=loss.generator)[:n_sample]
        rows = torch.cat([pos, available[pick]])
        target = torch.cat([local[pos], local.new_zeros(n_sample)])
        total = total + F.cross_entropy(blocks[k][rows], target)
    return total


def test_bags_vectorised_equals_loop():
    context = long_tail_context(400)
    new, old = build_loss("bags", context, seed=2), build_loss("bags", context, seed=2)
    for call in range(3):
        logits, labels = lvis_batch(new.num_outputs(400), seed=call, n=3000, c=400)
        if call == 2:  # a group without positives draws nothing
            labels[new.group_of_label(labels) == 1] = 0
        v0, g0 = loss_and_grad(lambda z, y: bags_loop(old, z, y), logits, labels)
        v1, g1 = loss_and_grad(new, logits, labels)
        assert torch.equal(v0, v1) and torch.equal(g0, g1)  # same rows, same order


def test_federated_index_select_equals_advanced_indexing():
    context = long_tail_context(400)
    new, old = build_loss("federated", context, seed=3), build_loss("federated", context, seed=3)
    for call in range(3):
        logits, labels = lvis_batch(401, seed=call, n=1000, c=400)
        v1, g1 = loss_and_grad(new, logits, labels)

        def before(z, y):
            selected = old.select_classes(y)
            target = (y[:, None] == selected[None, :]).to(z.dtype)
            bce = F.binary_cross_entropy_with_logits(z[:, selected], target, reduction="sum")
            return bce / z.shape[0]

        v0, g0 = loss_and_grad(before, logits, labels)
        assert torch.equal(v0, v1) and torch.equal(g0, g1)


@pytest.mark.cuda  # deselected by default; scripts/gpu_check.sh runs it on a GPU
def test_loss_forwards_sync_at_most_once_on_cuda():
    expected = {"softmax_ce": 0, "bce": 0, "eql": 0, "acsl_adaptive": 0, "acsl": 1,
                "bags": 1, "federated": 1}
    context = long_tail_context()
    for key, allowed in expected.items():
        name, params = ("acsl", {"bg_mode": "adaptive"}) if key == "acsl_adaptive" else (key, {})
        loss = build_loss(name, context, **params).cuda()
        logits, labels = (t.cuda() for t in lvis_batch(loss.num_outputs(C)))
        loss(logits, labels)  # warm-up: lazy CUDA initialisation may sync
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loss(logits, labels)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= allowed, (key, [str(w.message) for w in syncs])
        if name == "acsl":  # the suppression record (two calls) stays on the device
            counts, rois = loss.suppression()
            assert counts.is_cuda and int(rois.sum()) == 2 * int((labels > 0).sum())


# ------------------------------------------------------------------ training steps


def _loader(data):
    from acsl_cli.engine.loaders import train_loader

    return train_loader(data.train, 4, seed=5)


def _sched():
    from acsl_cli.engine.schedule import StageSchedule

    return StageSchedule(epochs=1, lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=0,
                         warmup_ratio=1.0, steps=[], grad_clip=35.0)


def test_detector_step_bf16_trains_with_finite_losses(tiny):
    from acsl_cli.engine.train_detector import train_detector

    _, data, model0 = tiny
    model = copy.deepcopy(model0)
    torch.manual_seed(0)
    history = train_detector(model, _loader(data), _sched(), "cpu", max_iters=2,
                             show_progress=False, amp="bf16")
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    changed = [not torch.equal(p, q) for p, q in zip(model.parameters(), model0.parameters(),
                                                     strict=True)]
    assert any(changed)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights


def test_heads_step_bf16_trains_with_finite_losses(tiny):
    from acsl_cli.engine.finetune_heads import finetune_heads, new_head

    _, data, model = tiny
    model = copy.deepcopy(model)
    context = long_tail_context(data.cmap.num_classes)
    heads = [new_head(n, build_loss(n, context), model.roi_heads.box_predictor.cls_score,
                      data.cmap.num_classes) for n in ("bce", "acsl", "bags")]
    torch.manual_seed(0)
    finetune_heads(FrozenTrunk(model), heads, _loader(data), _sched(), "cpu", max_iters=2,
                   show_progress=False, amp="bf16")
    for h in heads:
        assert len(h.history) == 2 and all(math.isfinite(r["loss"]) for r in h.history)


def test_fp16_on_cpu_is_a_one_line_config_error(tiny):
    from acsl_cli.engine.inference import predict
    from acsl_cli.engine.train_detector import DetectorStep

    _, data, model = tiny
    with pytest.raises(ConfigError, match="amp=fp16 needs CUDA") as e:
        DetectorStep(copy.deepcopy(model), _sched(), "cpu", amp="fp16")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="amp=fp16 needs CUDA"):
        predict(FrozenTrunk(copy.deepcopy(model)), data.val, data.cmap, "cpu", amp="fp16",
                show_progress=False)
    with pytest.raises(ConfigError, match="amp"):
        DetectorStep(copy.deepcopy(model), _sched(), "cpu", amp="fp8")


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    """fp16 where this machine can run it: the scaler plumbing is device-independent."""
    from acsl_cli.engine import mixed_precision

    monkeypatch.setattr(mixed_precision, "FP16_DEVICES", ("cuda", "cpu"))


def test_fp16_resume_state_carries_the_scalers(tiny, fp16_on_cpu):
    from acsl_cli.engine.finetune_heads import HeadsStep, new_head
    from acsl_cli.engine.train_detector import DetectorStep

    _, data, model = tiny
    step = DetectorStep(copy.deepcopy(model), _sched(), "cpu", amp="fp16")
    step.scaler.scale(torch.ones(()))  # the scale tensor exists from the first use
    step.scaler.update(1024.0)
    state = step.state_dict()
    assert state["scaler"]["scale"] == 1024.0
    other = DetectorStep(copy.deepcopy(model), _sched(), "cpu", amp="fp16")
    other.load_state_dict(state)
    assert other.scaler.get_scale() == 1024.0
    with pytest.raises(KeyError):  # an amp=off resume file does not fit an fp16 step
        other.load_state_dict({k: v for k, v in state.items() if k != "scaler"})
    assert "scaler" not in DetectorStep(copy.deepcopy(model), _sched(), "cpu", "off").state_dict()

    trunk = FrozenTrunk(copy.deepcopy(model))
    context = long_tail_context(data.cmap.num_classes)
    heads = [new_head(n, build_loss(n, context), trunk.stage1_classifier, data.cmap.num_classes)
             for n in ("bce", "acsl")]
    step2 = HeadsStep(trunk, heads, _sched(), "cpu", amp="fp16")
    step2.scalers[1].scale(torch.ones(()))
    step2.scalers[1].update(512.0)
    state2 = step2.state_dict()
    assert [state2[h.name]["scaler"]["scale"] for h in heads] == [65536.0, 512.0]
    fresh = HeadsStep(trunk, heads, _sched(), "cpu", amp="fp16")
    fresh.load_state_dict(state2)
    assert [s.get_scale() for s in fresh.scalers] == [65536.0, 512.0]


def test_skipped_fp16_step_leaves_weights_and_halves_the_scale(fp16_on_cpu):
    from acsl_cli.engine.loop import LossGuard
    from acsl_cli.engine.mixed_precision import MixedPrecision, optimizer_step

    layer = torch.nn.Linear(3, 2)
    before = copy.deepcopy(layer.state_dict())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = MixedPrecision("fp16", "cpu").new_scaler()
    layer.weight.register_hook(lambda g: torch.full_like(g, math.inf))  # fp16 overflow
    loss = layer(torch.ones(4, 3)).sum()
    LossGuard("stage 2").check("h", loss.item(), 0)  # the loss itself is finite
    optimizer_step(loss, opt, list(layer.parameters()), 35.0, scaler)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert scaler.get_scale() == 65536.0 / 2


# ------------------------------------------------------------------ end to end


def test_train_smoke_bf16_end_to_end(tmp_path, monkeypatch):
    """`acsl train schedule=smoke amp=bf16` on CPU (the tiny set: bf16 is slow on a CPU):
    exit 0, metrics, and autocast in all three places (stage 1, stage 2, inference)."""
    from acsl_cli.cli import app
    from acsl_cli.engine import mixed_precision

    seen: set[tuple[str, str]] = set()
    init = mixed_precision.MixedPrecision.__init__

    def spy(self, amp, device):
        seen.add((sys._getframe(1).f_code.co_qualname, amp))
        init(self, amp, device)

    monkeypatch.setattr(mixed_precision.MixedPrecision, "__init__", spy)
    res = CliRunner().invoke(app, ["train", *TINY, "amp=bf16", "schedule.eval_max_images=8",
                                   f"output_root={tmp_path}", "run_name=amp"])
    assert res.exit_code == 0, res.output
    metrics = (tmp_path / "runs" / "amp" / "metrics.json").read_text()
    assert '"AP"' in metrics
    assert {("DetectorStep.__init__", "bf16"), ("HeadsStep.__init__", "bf16"),
            ("predict_top_k", "bf16")} <= seen, seen  # inference: engine.inference
