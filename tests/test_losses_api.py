"""The losses' Python API for other frameworks: background first or last, same value and
gradient on the permuted logits, labels out of range refused."""

from __future__ import annotations

import math

import pytest
import torch

from acsl_cli.errors import ConfigError
from acsl_cli.losses import detection_loss

C = 6
STATS = {"frequencies": "rcfrcf", "image_counts": (1, 5, 50, 200, 3, 30),
         "instance_counts": (1, 5, 50, 200, 3, 30), "num_images": 300}
CASES = [("softmax_ce", {}), ("bce", {}), ("eql", {"lambda_": 0.1}), ("eqlv2", {}),
         ("federated", {"num_sample_classes": 3}), ("acsl", {"xi": 0.5}),
         ("acsl", {"xi": 0.5, "bg_mode": "adaptive"}), ("seesaw", {"layout": "single_softmax"})]


def _build(name, params, background):
    return detection_loss(name, C, background=background, seed=3, **STATS, **params)


@pytest.mark.parametrize(("name", "params"), CASES)
def test_background_last_is_the_same_loss_on_permuted_logits(name, params):
    g = torch.Generator().manual_seed(0)
    n = 40
    first_logits = torch.randn(n, C + 1, generator=g, dtype=torch.float64)
    first_labels = torch.randint(0, C + 1, (n,), generator=g)
    first_labels[:10] = 0  # background RoIs
    # the same RoIs in mmdetection's layout: class j in column j, background in column C
    last_logits = torch.cat([first_logits[:, 1:], first_logits[:, :1]], dim=1).detach()
    last_labels = torch.where(first_labels == 0, C, first_labels - 1)
    a, b = first_logits.clone().requires_grad_(), last_logits.clone().requires_grad_()
    first, last = _build(name, params, "first"), _build(name, params, "last")
    for _ in range(2):  # stateful losses (EQLv2, Seesaw) stay in step
        va, vb = first(a, first_labels), last(b, last_labels)
        assert va.item() == pytest.approx(vb.item(), rel=1e-12, abs=1e-12)
    ga, = torch.autograd.grad(first(a, first_labels), a)
    gb, = torch.autograd.grad(last(b, last_labels), b)
    torch.testing.assert_close(torch.cat([ga[:, 1:], ga[:, :1]], dim=1), gb)
    torch.testing.assert_close(first.scores(a.detach()), last.scores(b.detach()))


def test_labels_out_of_range_are_refused():
    loss = _build("bce", {}, "last")
    logits = torch.zeros(3, C + 1)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.6 \(background 6\)"):
        loss(logits, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="got -1..1"):
        _build("bce", {}, "first")(logits, torch.tensor([0, -1, 1]))


def test_a_loss_with_its_own_layout_stays_background_first():
    with pytest.raises(ConfigError, match="its own classifier layout"):
        _build("bags", {"bins": [10]}, "last")
    with pytest.raises(ConfigError, match="background='middle'"):
        _build("bce", {}, "middle")
    assert _build("bags", {"bins": [10]}, "first")(torch.zeros(0, C + 4), torch.zeros(0).long()
                                                    ).item() == 0.0


# --------------------------------------------------------------------------- presets


def test_every_preset_acsl_losses_lists_builds_the_cli_loss():
    """``detection_loss(NAME)`` for every ``loss=NAME`` choice is the loss the CLI builds
    (its preset's parameters); the run-level ones (xi, seed, dataset bins) are keywords."""
    from acsl_cli.config import load_settings
    from acsl_cli.losses import LossContext, build_loss
    from acsl_cli.losses.presets import preset
    from acsl_cli.plan import loss_presets

    names = [name for name, _ in loss_presets()]
    assert "acsl_adaptive" in names
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(30, C + 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (30,), generator=g)
    labels[:8] = 0
    for name in names:
        cli = load_settings([f"loss={name}", "seed=3"]).loss
        run_level = {k: v for k, v in cli.params.items()
                     if k not in preset(name)[1] and k != "seed"}
        ours = detection_loss(name, C, seed=3, **STATS, **run_level)
        stats = {k: tuple(v) if isinstance(v, str) else v for k, v in STATS.items()}
        reference = build_loss(cli.name, LossContext(C, 3, **stats),
                               **{k: list(v) if isinstance(v, tuple) else v
                                  for k, v in cli.params.items()})
        width = reference.num_outputs(C)
        assert ours.loss.name == cli.name
        assert ours(logits[:, :width], labels).item() == pytest.approx(
            reference(logits[:, :width], labels).item(), rel=1e-12), name
    assert detection_loss("acsl_adaptive", C).loss.bg_mode == "adaptive"
    assert detection_loss("acsl_adaptive", C, bg_mode="official", **STATS).loss.bg_mode == \
        "official"  # keywords win over the preset


# --------------------------------------------------------------------------- mmdetection call

EPS = torch.finfo(torch.float32).eps


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _hand_terms(name: str, logits: list[list[float]], labels: list[int]) -> list[float]:
    """Per-RoI terms by hand in the project's layout (background column 0): softmax CE
    -log softmax(z)_y; sigmoid BCE sum_j softplus(z_j) - z_y."""
    out = []
    for z, y in zip(logits, labels, strict=True):
        if name == "softmax_ce":
            out.append(math.log(sum(math.exp(v) for v in z)) - z[y])
        else:
            out.append(sum(_softplus(v) for v in z) - z[y])
    return out


@pytest.mark.parametrize("name", ["softmax_ce", "bce"])
def test_mmdetection_call_weights_and_reduces_like_weight_reduce_loss(name):
    # mmdetection's layout: C = 2 classes in columns 0, 1; background column and label 2
    last = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 3.0, 0.0], [0.0, 0.0, 1.0]]
    labels = [2, 0, 1, 0]
    first = [[z[2], z[0], z[1]] for z in last]  # by hand in background-first order
    l0, l1, l2, l3 = _hand_terms(name, first, [0, 1, 2, 1])
    loss = detection_loss(name, 2, background="last")
    z = torch.tensor(last, dtype=torch.float64)
    y = torch.tensor(labels)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)

    assert loss(z, y).item() == pytest.approx((l0 + l1 + l2 + l3) / 4, rel=1e-12)
    weighted = [l0, 0.0, 2 * l2, 0.5 * l3]
    assert loss(z, y, w).item() == pytest.approx(sum(weighted) / 4, rel=1e-12)
    assert loss(z, y, w, avg_factor=2.5).item() == pytest.approx(sum(weighted) / (2.5 + EPS),
                                                                  rel=1e-12)
    assert loss(z, y, w, reduction_override="sum").item() == pytest.approx(sum(weighted),
                                                                          rel=1e-12)
    assert loss(z, y, w, avg_factor=2.5, reduction_override="none").tolist() == \
        pytest.approx(weighted, rel=1e-12)  # 'none' ignores avg_factor
    assert loss(z, y, w[:, None]).item() == pytest.approx(sum(weighted) / 4, rel=1e-12)
    with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
        loss(z, y, w, avg_factor=2.5, reduction_override="sum")
    # every RoI ignored: 0 / (0 + eps) = 0, not NaN
    assert loss(z, y, torch.zeros(4, dtype=torch.float64), avg_factor=0.0).item() == 0.0
    summed = detection_loss(name, 2, background="last", reduction="sum", loss_weight=3.0)
    assert summed(z, y, w).item() == pytest.approx(3 * sum(weighted), rel=1e-12)
    assert summed(z, y, w, reduction_override="mean").item() == pytest.approx(
        3 * sum(weighted) / 4, rel=1e-12)
    with pytest.raises(ValueError, match="label_weights must have shape"):
        loss(z, y, w[:3])


@pytest.mark.parametrize(("name", "params"), CASES + [("seesaw", {})])
def test_per_roi_terms_average_to_the_loss_with_the_same_draws_and_statistics(name, params):
    """The mmdetection call's terms are the loss's own: their mean is the plain value, call
    after call (stateful losses' statistics and seeded draws stay in step)."""
    g = torch.Generator().manual_seed(1)
    plain, weighted = _build(name, params, "first"), _build(name, params, "first")
    width = plain.loss.num_outputs(C)
    for _ in range(3):
        logits = torch.randn(50, width, generator=g, dtype=torch.float64)
        labels = torch.randint(0, C + 1, (50,), generator=g)
        labels[:20] = 0
        ones = torch.ones(50, dtype=torch.float64)
        a = plain(logits, labels)
        b = weighted(logits, labels, ones, avg_factor=50 - EPS)  # sum / (50 - eps + eps)
        assert b.item() == pytest.approx(a.item(), rel=1e-9)
    assert plain.loss.state_dict().keys() == weighted.loss.state_dict().keys()
    if name == "acsl":  # the record's background row is form-dependent (acsl_record): the
        # suppression it reports leaves it out
        for x, y in zip(plain.loss.suppression(), weighted.loss.suppression(), strict=True):
            torch.testing.assert_close(x, y)
        return
    for key, value in plain.loss.state_dict().items():
        torch.testing.assert_close(weighted.loss.state_dict()[key], value)


def test_bags_has_no_per_roi_terms_and_says_so():
    bags = _build("bags", {"bins": [10]}, "first")
    logits, labels = torch.zeros(4, C + 4), torch.zeros(4).long()
    assert bags(logits, labels).item() == pytest.approx(bags(logits, labels).item())
    with pytest.raises(ConfigError, match="loss 'bags' has no per-RoI terms"):
        bags(logits, labels, torch.ones(4))
