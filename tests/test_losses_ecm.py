"""loss=ecm against the ECM release's equations, written out here in the release's own
layout (background = last column, label C) and its own literal form (the two-exponential
probabilities, ``compute_weight``, ``get_detection_weight``, ``get_activation``), never by
calling our module: values, gradients, C in {5, 50, 1203}, float64 and float32, the
empty batch, test-time scoring on hand-derived values, and several heads in one pass."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf

from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, build_loss, detection_loss
from tests.test_losses import ROOT

RATIO = 6.3313  # the release's fg_bg_ratio


def release_loss(z: torch.Tensor, labels: torch.Tensor, counts: list[float],
                 ratio: float = RATIO) -> torch.Tensor:
    """The release's forward, float64, background last: logits z (B, C + 1), labels 0..C."""
    B, C = z.shape[0], z.shape[1] - 1
    n = torch.tensor(list(counts), dtype=torch.float64)
    n = torch.cat([n, n.sum().reshape(1) * ratio])
    n_pos, n_neg = n, n.sum() - n
    pos_w = (n_neg.pow(0.25) / (n_pos.pow(0.25) + n_neg.pow(0.25))).pow(-1).log()
    neg_w = (n_pos.pow(0.25) / (n_pos.pow(0.25) + n_neg.pow(0.25))).pow(-1).log()
    target = torch.zeros(B, C + 1, dtype=torch.float64)
    target[torch.arange(B), labels] = 1
    e_pos, e_neg = (z + pos_w).exp(), (-z + neg_w).exp()
    pred_pos, pred_neg = e_pos / (e_pos + e_neg), e_neg / (e_pos + e_neg)
    loss = -(pred_pos.log() * target + pred_neg.log() * (1 - target))
    a = (n.sum() - n) / n
    weight = a * ((1 + a) / a).log()
    return (loss * weight).sum() / B


def release_activation(z: torch.Tensor) -> torch.Tensor:
    """The release's get_activation (background last), then its class columns."""
    s = z.sigmoid()
    s[:, :-1] *= 1 - s[:, -1:]
    return s[:, :-1]


def to_first(z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Release layout -> ours: background column first, label C -> 0, j -> j + 1."""
    C = z.shape[1] - 1
    return torch.cat([z[:, -1:], z[:, :-1]], 1), torch.where(labels == C, 0, labels + 1)


def long_tail_counts(c: int, seed: int) -> list[int]:
    """Instance counts falling log-linearly from 50,000 to 1 in a shuffled class order."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.randperm(c, generator=g).double()
    return torch.exp(math.log(5e4) * (1 - rank / max(c - 1, 1))).round().long().tolist()


def batch(c: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Release-layout logits (|z| <= 8) and labels, about a quarter foreground."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c + 1, generator=g, dtype=torch.float64) * 3 - 2).clamp(-8, 8)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= 0.25] = c
    return z, labels


def ecm(counts: list[int], **params) -> torch.nn.Module:
    context = LossContext(len(counts), image_counts=tuple(1 for _ in counts),
                          instance_counts=tuple(counts), num_images=10)
    return build_loss("ecm", context, **params)


def value_and_grad(fn, z: torch.Tensor, labels: torch.Tensor):
    leaf = z.detach().clone().requires_grad_(True)
    value = fn(leaf, labels)
    value.backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [5, 50, 1203])
def test_value_and_gradient_equal_the_release(c, dtype):
    counts = long_tail_counts(c, seed=c)
    loss = ecm(counts)
    for call in range(3 if c < 1000 else 2):  # stateless: each call is its batch's value
        z, labels = batch(c, 256 if c < 1000 else 128, seed=call)
        ref, ref_grad = value_and_grad(lambda x, y: release_loss(x, y, counts), z, labels)
        first, first_labels = to_first(z, labels)
        ours, grad = value_and_grad(loss, first.to(dtype), first_labels)
        assert ours.dtype == dtype and grad.dtype == dtype
        # float64: the release's log(e / (e + e')) itself rounds at ~1e-11 where p -> 1
        tol = 1e-9 if dtype == torch.float64 else 2e-6
        assert ours.item() == pytest.approx(ref.item(), rel=tol)
        grad_last = torch.cat([grad[:, 1:], grad[:, :1]], 1).double()
        assert torch.allclose(grad_last, ref_grad, rtol=tol * 10, atol=tol * 1e-2)
    assert loss.state_dict() == {}  # margins and weights are rebuilt from the counts


def test_hand_derived_margins_weights_and_value():
    """C = 1, one class of count 1, fg_bg_ratio 3: n = (3, 1) (background first), N = 4."""
    loss = ecm([1], fg_bg_ratio=3.0)
    r = 3 ** 0.25
    assert loss.pos_margin.tolist() == pytest.approx([math.log((r + 1) / 1), math.log((1 + r) / r)])
    assert loss.neg_margin.tolist() == pytest.approx([math.log((r + 1) / r), math.log(1 + r)])
    # a = (N - n) / n: 1/3 (background), 3 (the class); w = a log((1 + a) / a)
    assert loss.class_weight.tolist() == pytest.approx([math.log(4) / 3, 3 * math.log(4 / 3)])
    # z = 0: the class column's logit is 2 z + alpha - beta = -log(3) / 4 with target 1, the
    # background column's +log(3) / 4 with target 0: both BCE terms are log(1 + 3^(1/4))
    z = torch.zeros(1, 2, dtype=torch.float64)
    expected = (math.log(4) / 3 + 3 * math.log(4 / 3)) * math.log(1 + r)
    assert loss(z, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-14)
    # the factor 2 on the logit: z_class = log(3) / 8 cancels the class margin exactly
    z = torch.tensor([[0.0, math.log(3) / 8]], dtype=torch.float64)
    expected = math.log(4) / 3 * math.log(1 + r) + 3 * math.log(4 / 3) * math.log(2)
    assert loss(z, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-14)


def test_scores_are_the_release_activation_on_hand_values():
    loss = ecm([5, 7])
    # background first: z_bg = log 3 (sigmoid 3/4), z_1 = 0 (1/2), z_2 = log 4 (4/5)
    z = torch.tensor([[math.log(3.0), 0.0, math.log(4.0)]], dtype=torch.float64)
    assert loss.scores(z)[0].tolist() == pytest.approx([0.5 / 4, 0.8 / 4], rel=1e-14)
    assert ecm([5, 7], bg_factor=False).scores(z)[0].tolist() == pytest.approx([0.5, 0.8])
    from acsl_cli.models.calibration import refusal

    assert "sigmoids" in refusal("ecm", {})  # NorCal (one softmax) refuses it, like bce
    z, labels = batch(5, 64, seed=3)
    assert torch.allclose(ecm(long_tail_counts(5, 0)).scores(to_first(z, labels)[0]),
                          release_activation(z.clone()), rtol=1e-12, atol=0)


def test_mmdetection_call_in_the_release_layout():
    """detection_loss(background="last") takes the release's cls_score and labels as they are;
    with mmdetection's all-ones label_weights and avg_factor = N it is the same loss."""
    counts = long_tail_counts(50, seed=1)
    api = detection_loss("ecm", num_classes=50, background="last", instance_counts=counts)
    z, labels = batch(50, 128, seed=4)
    ref, ref_grad = value_and_grad(lambda x, y: release_loss(x, y, counts), z, labels)
    ours, grad = value_and_grad(api, z, labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-14)
    weighted = api(z, labels, torch.ones(128), avg_factor=128.0)
    assert weighted.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(api.scores(z), release_activation(z.clone()), rtol=1e-12, atol=0)


def test_counts_option_and_the_yaml_defaults_are_the_release():
    cfg = OmegaConf.load(ROOT / "conf" / "loss" / "ecm.yaml")
    assert (cfg.fg_bg_ratio, cfg.counts, cfg.bg_factor) == (RATIO, "instances", True)
    context = LossContext(3, image_counts=(4, 2, 1), instance_counts=(40, 20, 10),
                          num_images=5)
    z, labels = batch(3, 32, seed=5)
    first, first_labels = to_first(z, labels)
    for counts, values in (("instances", [40, 20, 10]), ("images", [4, 2, 1])):
        loss = build_loss("ecm", context, counts=counts)
        ref = release_loss(z, labels, values)
        assert loss(first, first_labels).item() == pytest.approx(ref.item(), rel=1e-9)
    # counts=images needs only image counts (and the default only instance counts)
    build_loss("ecm", counts="images", image_counts=[1, 2])
    with pytest.raises(ConfigError, match="instance_counts"):
        build_loss("ecm", image_counts=[1, 2])


def test_a_class_without_train_instances_takes_no_loss():
    """The release divides by zero there (NaN); ours is the limit n -> 0: the column takes no
    loss and no gradient, the other columns are the release's without that class."""
    counts = long_tail_counts(6, seed=2)
    z, labels = batch(6, 64, seed=6)
    labels[labels == 2] = 6  # no RoI of the empty class
    assert math.isnan(release_loss(z, labels, counts[:2] + [0] + counts[3:]).item())
    keep = [j for j in range(7) if j != 2]
    ref, ref_grad = value_and_grad(
        lambda x, y: release_loss(x, y, counts[:2] + counts[3:]), z[:, keep],
        torch.where(labels > 2, labels - 1, labels))
    first, first_labels = to_first(z, labels)
    ours, grad = value_and_grad(ecm(counts[:2] + [0] + counts[3:]), first, first_labels)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.equal(grad[:, 3], torch.zeros(64, dtype=torch.float64))
    grad_last = torch.cat([grad[:, 1:], grad[:, :1]], 1)[:, keep]
    assert torch.allclose(grad_last, ref_grad, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_logits_stay_exact_and_roi_terms_sum_to_the_value(dtype):
    """|z| up to 60, where the release's exp() of float32 overflows: the loss is the stable
    form of its equations, -log p = log(1 + e^(beta - alpha - 2z)) by logaddexp; the
    per-RoI terms (mmdetection's path) sum to the value with the same gradient."""
    counts = long_tail_counts(50, seed=7)
    z, labels = batch(50, 200, seed=8)
    z = z * 7.5  # up to |z| = 60
    n = torch.tensor(counts + [sum(counts) * RATIO], dtype=torch.float64)
    p, q = n.pow(0.25), (n.sum() - n).pow(0.25)
    x = 2 * z + (torch.log((p + q) / q) - torch.log((p + q) / p))
    target = torch.zeros_like(z)
    target[torch.arange(200), labels] = 1
    zero = torch.zeros(())
    bce = torch.where(target > 0, torch.logaddexp(zero, -x), torch.logaddexp(zero, x))
    a = (n.sum() - n) / n
    ref = (bce * a * torch.log1p(1 / a)).sum() / 200  # log((1 + a) / a), rounded once
    first, first_labels = to_first(z, labels)
    loss = ecm(counts)
    value, grad = value_and_grad(loss, first.to(dtype), first_labels)
    assert value.item() == pytest.approx(ref.item(), rel=1e-12 if dtype == torch.float64 else 1e-5)
    terms, grad_terms = value_and_grad(lambda v, y: loss.roi_losses(v, y).sum() / 200,
                                       first.to(dtype), first_labels)
    assert terms.item() == pytest.approx(value.item(), rel=1e-12 if dtype == torch.float64
                                         else 1e-5)
    assert torch.allclose(grad_terms, grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_empty_batch_is_zero_with_zero_gradient(dtype):
    layer = torch.nn.Linear(3, 6).to(dtype)
    value = ecm([1, 2, 3, 4, 5])(layer(torch.zeros(0, 3, dtype=dtype)),
                                 torch.zeros(0, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and value.dtype == dtype
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))


@pytest.mark.parametrize(("params", "needle"), [
    ({"fg_bg_ratio": 0}, "fg_bg_ratio"), ({"fg_bg_ratio": -1.0}, "fg_bg_ratio"),
    ({"fg_bg_ratio": True}, "fg_bg_ratio"), ({"fg_bg_ratio": float("inf")}, "fg_bg_ratio"),
    ({"counts": "boxes"}, "counts"), ({"bg_factor": "yes"}, "bg_factor"),
    ({"instance_counts": [0, 0]}, "all zero"), ({"instance_counts": [3, -1]}, "non-negative"),
])
def test_bad_parameters_are_one_line_config_errors(params, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        build_loss("ecm", **{"instance_counts": [3, 1], **params})
    assert "\n" not in str(err.value)


def test_heads_sharing_a_pass_train_exactly_as_alone(tiny):
    """ecm beside other heads on one frozen trunk trains as it does alone."""
    from tests.test_engine import _finetune, _heads

    cfg, data, model = tiny
    together = _heads(cfg, data, copy.deepcopy(model), ["ecm", "bce"])
    _finetune(cfg, data, copy.deepcopy(model), together)
    alone = _heads(cfg, data, copy.deepcopy(model), ["ecm"])
    w0 = alone[0].classifier.weight.detach().clone()
    _finetune(cfg, data, copy.deepcopy(model), alone)
    assert not torch.equal(w0, alone[0].classifier.weight)
    assert torch.allclose(alone[0].classifier.weight, together[0].classifier.weight, atol=1e-6)
    assert [h["loss"] for h in alone[0].history] == pytest.approx(
        [h["loss"] for h in together[0].history], rel=1e-5)


@pytest.mark.cuda  # deselected by default; scripts/gpu_check.sh runs the cuda-marked tests
def test_forward_and_backward_make_no_host_sync_on_cuda():
    import warnings

    loss = ecm(long_tail_counts(1203, seed=0)).cuda()
    z, labels = batch(1203, 8192, seed=0)
    first, first_labels = (t.cuda() for t in to_first(z.float(), labels))
    first.requires_grad_(True)
    loss(first, first_labels).backward()  # warm-up: lazy CUDA initialisation may sync
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            value = loss(first, first_labels)
            value.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert not [w for w in caught if "synchroniz" in str(w.message)]
    ref = release_loss(z, labels, long_tail_counts(1203, seed=0))
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
