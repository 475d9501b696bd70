"""The normalised (cosine) classifier of the Seesaw release (``loss.classifier=normed``):
its output and gradients against the formula by hand, its init, the settings key and the
preset, the detector's and stage 2's layers (a smoke run and its ``eval ckpt=`` are in
``test_pipeline.py``, the cascade's stage 2 in ``test_cascade.py``, the resume in
``test_engine.py``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from acsl_cli import config as config_mod
from acsl_cli.conf_groups import LOSS_LAYER_KEYS
from acsl_cli.engine.finetune_heads import new_head
from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, build_loss
from acsl_cli.models.cascade import CascadeSpec
from acsl_cli.models.classifier import LINEAR, ClassifierSpec, NormedLinear
from acsl_cli.models.detector import build_detector
from acsl_cli.plan import loss_presets, plan_train
from acsl_cli.settings import LossSettings, loss_settings, stage2_key

# a row of norm 1e-6 (= eps): divided by 2e-6, half its direction
X = [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1e-6, 0.0, 0.0], [-1.0, 2.0, 2.0]]
W = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, -2.0, 1.0]]
B = [0.5, -0.25, 0.0]


def _layer(temperature: float = 20.0, power: float = 1.0) -> NormedLinear:
    layer = NormedLinear(3, 3, temperature, power).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(B, dtype=torch.float64))
    return layer


def _by_hand(x: list[float], w: list[float], b: float, t: float, p: float, eps: float) -> float:
    """z = (t x / (|x|^p + eps)) . (w / (|w|^p + eps)) + b, in plain floats."""
    nx = math.sqrt(sum(v * v for v in x)) ** p + eps
    nw = math.sqrt(sum(v * v for v in w)) ** p + eps
    return sum(t * a / nx * c / nw for a, c in zip(x, w, strict=True)) + b


@pytest.mark.parametrize("t, p", [(20.0, 1.0), (5.0, 2.0)])
def test_the_output_is_the_release_formula_by_hand(t, p):
    out = _layer(t, p)(torch.tensor(X, dtype=torch.float64))
    want = [[_by_hand(x, w, b, t, p, 1e-6) for w, b in zip(W, B, strict=True)] for x in X]
    assert out.flatten().tolist() == pytest.approx(sum(want, []), rel=1e-12, abs=1e-12)
    # the edge cases: a zero input and a zero row score their bias; the eps-sized input
    # is half-normalised (1e-6 / (1e-6 + 1e-6)), not a unit vector
    assert out[1].tolist() == B and out[:, 1].tolist() == [B[1]] * len(X)
    if p == 1.0:
        assert out[2, 0].item() == pytest.approx(t * 0.5 * (1 / (1 + 1e-6)) + B[0], rel=1e-12)


def test_the_gradients_are_the_derivative_by_hand():
    """p = 1: with u = x / (|x| + e) and v_j = w_j / (|w_j| + e), z_j = t u . v_j + b_j, so
    dz_j/dx = t (v_j - (x . v_j) x / (|x| (|x| + e))) / (|x| + e), symmetrically for w_j."""
    t, e = 20.0, 1e-6
    x = torch.tensor([X[0], X[3]], dtype=torch.float64, requires_grad=True)
    layer = _layer(t)
    g = torch.tensor([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0]], dtype=torch.float64)
    (layer(x) * g).sum().backward()

    def unit(a):
        return a / (a.norm() + e)

    def d_unit(a, other):  # d(a / (|a| + e)) . other / da
        n = a.norm()
        return (other - (a @ other) * a / (n * (n + e))) / (n + e)

    xd, wd = x.detach(), layer.weight.detach()
    want_x = torch.zeros_like(xd)
    want_w = torch.zeros_like(wd)
    for i in range(2):
        for j in range(3):
            want_x[i] += g[i, j] * t * (d_unit(xd[i], unit(wd[j])) if wd[j].norm() > 0 else 0)
            if wd[j].norm() > 0:
                want_w[j] += g[i, j] * t * d_unit(wd[j], unit(xd[i]))
    assert torch.allclose(x.grad, want_x, rtol=1e-10, atol=1e-12)
    # the zero row: |w| has no gradient at 0 (torch's subgradient), so dv/dw = I / e
    want_w[1] = sum(g[i, 1] * t * unit(xd[i]) / e for i in range(2))
    assert torch.allclose(layer.weight.grad, want_w, rtol=1e-10)
    assert torch.equal(layer.bias.grad, g.sum(0))
    assert torch.autograd.gradcheck(_layer(7.0), (x.detach()[:1].clone().requires_grad_(),))


def test_the_init_is_the_releases_and_the_parameters_are_a_linear_layers():
    torch.manual_seed(0)
    layer = NormedLinear(256, 400)
    assert layer.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(layer.weight.mean().item()) < 1e-4 and torch.equal(layer.bias,
                                                                  torch.zeros(400))
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    assert type(LINEAR.layer(4, 3)) is nn.Linear
    assert type(ClassifierSpec("normed", 5.0).layer(4, 3)) is NormedLinear
    assert ClassifierSpec("normed", 5.0).layer(4, 3).temperature == 5.0
    with pytest.raises(ValueError, match="temperature"):
        NormedLinear(4, 3, temperature=0.0)
    with pytest.raises(ValueError, match="linear, normed"):
        ClassifierSpec("cosine")


# --------------------------------------------------------------------------- settings


def test_a_loss_comma_list_over_the_layer_makes_two_heads_and_leaves_linear_as_it_was():
    plain = plan_train(["loss=seesaw"]).heads
    both = plan_train(["loss=seesaw", "loss.classifier=linear,normed"]).heads
    assert [h.label for h in both] == ["seesaw", "seesaw normed T=20"]
    assert [h.id for h in both] == ["seesaw", "seesaw_normed_T20"]
    assert [(h.loss.classifier, h.loss.temperature) for h in both] == [
        ("linear", 20.0), ("normed", 20.0)]
    # the linear head is the plain one: same node, same stage-2 key (pinned on main)
    assert both[0].loss.as_dict() == plain[0].loss.as_dict()
    s = plain[0].settings
    assert stage2_key(s, [both[0].loss], "x", 1) == "1d107bb46a7a"
    assert both[1].loss.as_dict() == {**plain[0].loss.as_dict(), "classifier": "normed",
                                      "temperature": 20.0}
    # any loss takes it; a temperature on a linear head changes nothing
    for extra in (["loss.classifier=linear"], ["loss.temperature=5"]):
        s = config_mod.load_settings(extra)
        assert stage2_key(s, [s.loss], "x", 1) == "3e03173aa82e", extra
    (bce,) = plan_train(["loss=bce", "loss.classifier=normed", "loss.temperature=10"]).heads
    assert bce.label == "bce normed T=10" and not set(bce.loss.params) & set(LOSS_LAYER_KEYS)


def test_the_preset_is_the_release_seesaw_with_the_normed_layer():
    assert "seesaw_normed" in dict(loss_presets())
    preset = config_mod.load_settings(["loss=seesaw_normed"]).loss
    plain = config_mod.load_settings(["loss=seesaw"]).loss
    assert (preset.name, preset.params) == (plain.name, plain.params)
    assert (preset.classifier, preset.temperature) == ("normed", 20.0)
    back = config_mod.load_settings(["loss=seesaw_normed", "loss.classifier=linear"]).loss
    assert back.as_dict() == plain.as_dict()
    from acsl_cli.losses.api import detection_loss

    assert detection_loss("seesaw_normed", 4).loss.name == "seesaw"  # the layer is the caller's


@pytest.mark.parametrize("override, says", [
    ("loss.classifier=cosine", "loss.classifier"),
    ("loss.temperature=0", "loss.temperature"),
    ("loss.temperature=abc", "loss.temperature"),
])
def test_a_bad_layer_value_is_one_line(override, says):
    with pytest.raises(ConfigError, match=says) as e:
        config_mod.load_settings(["loss=seesaw", override])
    assert "\n" not in str(e.value)


def test_a_checkpoints_loss_node_gives_its_layer_back():
    node = {"name": "seesaw", "p": 0.8, "classifier": "normed", "temperature": 20}
    s = loss_settings(node)
    assert (s.classifier, s.temperature, dict(s.params)) == ("normed", 20.0, {"p": 0.8})
    assert loss_settings(s.as_dict()) == s
    assert loss_settings({"name": "bce"}) == LossSettings("bce")  # heads saved before it
    with pytest.raises(ConfigError, match="loss.classifier"):
        loss_settings({"name": "bce", "classifier": 3})
    assert LOSS_LAYER_KEYS == tuple(
        f for f in LossSettings.__dataclass_fields__ if f not in ("name", "params"))


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("cascade", [None, CascadeSpec()])
def test_the_detector_builds_normed_classifiers_that_train(cascade):
    s = config_mod.load_settings([])
    loss = build_loss("seesaw", LossContext(3))
    torch.manual_seed(0)
    plain = build_detector(s.backbone, 3, loss, 128, 128, cascade=cascade,
                           class_agnostic_boxes=False)
    torch.manual_seed(0)
    normed = build_detector(s.backbone, 3, loss, 128, 128, cascade=cascade,
                            class_agnostic_boxes=False,
                            classifier=ClassifierSpec("normed", 20.0))
    assert all(type(c) is nn.Linear for c in plain.roi_heads.classifiers)
    layers = normed.roi_heads.classifiers
    assert len(layers) == (3 if cascade else 1)
    assert all(isinstance(c, NormedLinear) and c.out_features == 5 for c in layers)
    # the same parameter names: a plain detector's state dict loads as it is
    normed.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 128, 128, generator=g)]
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 70.0, 70.0]]),
                "labels": torch.tensor([2])}]
    normed.train()
    losses = normed(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in layers)


def test_a_normed_head_starts_from_its_losss_rows():
    """Every loss's init runs on the layer's parameters: a copy gives the stage-1 rows (their
    directions are what the layer reads) and biases; BAGS's fresh rows are the release's."""
    torch.manual_seed(0)
    stage1 = nn.Linear(16, 5)  # C = 4
    spec = ClassifierSpec("normed", 20.0)
    head = new_head("ce", build_loss("softmax_ce", LossContext(4)), stage1, 4, spec)
    assert isinstance(head.classifier, NormedLinear)
    assert torch.equal(head.classifier.weight, stage1.weight)
    assert torch.equal(head.classifier.bias, stage1.bias)
    x = torch.randn(6, 16)
    unit = nn.functional.normalize
    want = 20 * unit(x, dim=1) @ unit(stage1.weight, dim=1).T + stage1.bias
    assert torch.allclose(head.classifier(x), want, atol=1e-4)
    seesaw = new_head("s", build_loss("seesaw", LossContext(4)), stage1, 4, spec).classifier
    assert torch.equal(seesaw.weight[2:], stage1.weight[1:])  # class rows as stage 1's
    bags = build_loss("bags", LossContext(4, instance_counts=(1, 5, 50, 500)), bins=[10])
    fresh = new_head("b", bags, stage1, 4, spec).classifier
    assert isinstance(fresh, NormedLinear) and torch.equal(fresh.bias, torch.zeros_like(
        fresh.bias))
    assert fresh.weight.std().item() == pytest.approx(0.01, rel=0.3)
