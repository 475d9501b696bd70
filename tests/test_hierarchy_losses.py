"""Hierarchy-aware multi-label training (Open Images): a RoI of a class is a positive of
every ancestor too, for sigmoid losses only. Values are checked against the equations
written out here, and the multi-label paths against the single-label ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from acsl_cli.errors import ConfigError
from acsl_cli.losses import build_loss
from acsl_cli.losses.base import LossContext
from tests.test_losses import loss_and_grad

C = 5
# class 3 has parents 1 and 2 (two parents); class 4 has parent 3 (so ancestors 1, 2, 3)
ANCESTORS = ((), (), (1, 2), (1, 2, 3), ())
FREQS = ("f", "c", "r", "r", "f")
CONTEXT = dict(num_classes=C, seed=3, frequencies=FREQS, image_counts=(500, 40, 3, 2, 300),
               instance_counts=(900, 60, 4, 2, 500), num_images=1000)
SIGMOID = [("bce", {}), ("eql", {"lambda_": 0.01}), ("eqlv2", {}),
           ("federated", {"num_sample_classes": 3}), ("acsl", {"bg_mode": "adaptive"}),
           ("acsl", {"bg_mode": "official"})]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _batch(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C + 1, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, C + 1, (n,), generator=g)
    labels[: n // 2] = 0  # many background rows: official mode draws common and rare rows
    return logits, labels


@pytest.mark.parametrize(("name", "params"), SIGMOID)
def test_a_flat_hierarchy_changes_nothing(name, params):
    """With no ancestors the multi-label path must give the single-label loss exactly
    (for ACSL: plain autograd against the fused function, official draws included)."""
    logits, labels = _batch()
    plain = build_loss(name, LossContext(**CONTEXT), **params)
    flat = build_loss(name, LossContext(**CONTEXT, ancestors=((),) * C), **params)
    assert flat.expansion is not None and plain.expansion is None
    for _ in range(2):  # twice: the losses' generators and running statistics advance alike
        v1, g1 = loss_and_grad(plain, logits, labels)
        v2, g2 = loss_and_grad(flat, logits, labels)
        assert torch.allclose(v1, v2, rtol=1e-12, atol=1e-12)
        assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-12)


def test_bce_trains_every_ancestor_as_positive_by_hand():
    loss = build_loss("bce", LossContext(C, ancestors=ANCESTORS))
    z = [[0.3, -1.0, 0.5, 2.0, -0.2, 0.1], [1.5, 0.0, -0.5, 0.2, 0.3, -1.2]]
    labels = torch.tensor([4, 0])
    positive = [{1, 2, 3, 4}, {0}]  # class 4 and its ancestors 1, 2, 3; background: column 0
    want = sum(_softplus(-v) if j in positive[i] else _softplus(v)
               for i, row in enumerate(z) for j, v in enumerate(row)) / 2
    got = loss(torch.tensor(z, dtype=torch.float64), labels)
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_acsl_weights_every_target_column_and_confident_negatives_by_hand():
    xi = 0.6
    loss = build_loss("acsl", LossContext(C, ancestors=ANCESTORS), xi=xi, bg_mode="adaptive")
    z = torch.tensor([[-2.0, 1.0, -3.0, -1.0, 0.0, 0.8]], dtype=torch.float64,
                     requires_grad=True)
    value = loss(z, torch.tensor([3]))  # targets: 3 and its parents 1, 2
    value.backward()
    p = torch.sigmoid(z.detach())[0].tolist()
    targets = {1, 2, 3}
    kept = {j for j in range(C + 1) if j in targets or p[j] >= xi}
    assert kept == {1, 2, 3, 5}  # column 5: p = 0.69 >= xi; column 4: p = 0.5 < xi
    row = z.detach()[0].tolist()
    want = sum(_softplus(-row[j]) if j in targets else _softplus(row[j]) for j in kept)
    assert value.item() == pytest.approx(want, rel=1e-12)
    grad = [(p[j] - (j in targets)) if j in kept else 0.0 for j in range(C + 1)]
    assert z.grad[0].tolist() == pytest.approx(grad, rel=1e-12, abs=1e-15)


def test_eql_keeps_a_tail_ancestor_column_of_the_target():
    # lambda 0.01 x 1000 images: classes 3 and 4 (3 and 2 images) are tail
    loss = build_loss("eql", LossContext(**CONTEXT, ancestors=ANCESTORS), lambda_=0.01)
    w = loss.weights(torch.tensor([4, 5, 0]))
    assert w[0].tolist() == [1, 1, 1, 1, 1, 1]  # tail column 3 is an ancestor of 4: kept
    assert w[1].tolist() == [1, 1, 1, 0, 0, 1]  # a class-5 RoI ignores tail columns 3, 4
    assert w[2].tolist() == [1] * (C + 1)        # background keeps the full BCE


def test_federated_selects_the_ancestors_of_present_classes():
    loss = build_loss("federated", LossContext(**CONTEXT, ancestors=ANCESTORS),
                      num_sample_classes=4)
    selected = loss.select_classes(torch.tensor([0, 4, 0]))
    assert {1, 2, 3, 4} <= set(selected.tolist())


@pytest.mark.parametrize("name", ["softmax_ce", "bags", "seesaw"])
def test_softmax_losses_train_each_box_own_label_and_refuse_expansion(name):
    params = {"bins": [10, 100]} if name == "bags" else {}
    loss = build_loss(name, LossContext(**CONTEXT, ancestors=ANCESTORS), **params)
    assert loss.expansion is None  # a softmax gives a RoI one class
    with pytest.raises(ConfigError, match="one class"):
        loss.use_hierarchy(ANCESTORS)


def test_bad_hierarchy_tables_are_config_errors():
    with pytest.raises(ConfigError, match="3 classes"):
        build_loss("bce", LossContext(C, ancestors=((), (), ())))
    with pytest.raises(ConfigError, match="ancestor"):
        build_loss("bce", LossContext(C, ancestors=((), (9,), (), (), ())))
    with pytest.raises(ConfigError, match="ancestor"):
        build_loss("bce", LossContext(C, ancestors=((1,), (), (), (), ())))


def test_expanded_bce_equals_bce_on_explicit_multi_hot_targets():
    logits, labels = _batch(64, seed=1)
    loss = build_loss("bce", LossContext(C, ancestors=ANCESTORS))
    target = F.one_hot(labels, C + 1).double()
    for label, parents in enumerate(ANCESTORS, start=1):
        for p in parents:
            target[labels == label, p] = 1
    want = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / 64
    assert loss(logits, labels).item() == pytest.approx(want.item(), rel=1e-12)
