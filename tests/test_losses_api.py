"""The losses' Python API for other frameworks: background first or last, same value and
gradient on the permuted logits, labels out of range refused."""

from __future__ import annotations

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
