"""EQLv2 and Seesaw: values, gradients and online statistics against hand-derived numbers.

References are written from the papers' equations (plain Python over rows and columns, or
numbers worked out by hand in the comments), never from running the implementations.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from acsl_cli.errors import ConfigError
from acsl_cli.losses import STAT_NAMES, LossContext, available_losses, build_loss, loss_class
from tests.test_losses import loss_and_grad, random_batch

ROOT = Path(__file__).resolve().parents[1]
LN2, LN3 = math.log(2.0), math.log(3.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))




# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["eqlv2", "seesaw"])
def test_registered_with_yaml_and_context(name):
    import inspect

    assert name in available_losses()
    cls = loss_class(name)
    assert cls.needs == () and set(cls.needs) <= set(STAT_NAMES)
    params = inspect.signature(cls.__init__).parameters
    text = (ROOT / "conf" / "loss" / f"{name}.yaml").read_text()
    assert text.startswith("# ")
    cfg = OmegaConf.load(ROOT / "conf" / "loss" / f"{name}.yaml")
    assert cfg.name == name
    keys = set(cfg.keys()) - {"name"}
    assert keys <= set(params)
    # the yaml's values are the papers' defaults, which are also the code's defaults
    built = build_loss(name, LossContext(5, instance_counts=(1, 2, 3, 4, 5)),
                       **{k: cfg[k] for k in keys})
    for k in keys:
        assert getattr(built, k) == params[k].default == cfg[k], k
    assert built.num_classes == 5


def test_papers_defaults():
    eqlv2 = build_loss("eqlv2", num_classes=2)
    assert (eqlv2.gamma, eqlv2.mu, eqlv2.alpha) == (12.0, 0.8, 4.0)
    seesaw = build_loss("seesaw", num_classes=2)
    assert (seesaw.p, seesaw.q, seesaw.eps) == (0.8, 2.0, 1e-2)


@pytest.mark.parametrize(
    "name, params, needle",
    [
        ("eqlv2", {}, "num_classes"),
        ("eqlv2", {"num_classes": 2, "gamma": -1}, "gamma"),
        ("eqlv2", {"num_classes": 2, "alpha": "4"}, "alpha"),
        ("eqlv2", {"num_classes": 2, "mu": True}, "mu"),
        ("seesaw", {}, "num_classes"),
        ("seesaw", {"num_classes": 2, "p": -0.1}, "'p'|p must"),
        ("seesaw", {"num_classes": 2, "eps": 0.0}, "eps"),
    ],
)
def test_bad_config_is_one_line_config_error(name, params, needle):
    with pytest.raises(ConfigError, match=needle) as excinfo:
        build_loss(name, **params)
    assert "\n" not in str(excinfo.value)


# --------------------------------------------------------------------------- EQLv2

# C = 2, columns [bg, 1, 2]. Three RoIs, probabilities chosen for exact logs:
#   row 0, label 1:   p = [1/2, 1/2, 3/4]
#   row 1, bg:        p = [3/4, 1/4, 1/2]
#   row 2, label 2:   p = [1/4, 1/4, 1/4]
HAND_Z = torch.tensor([[0.0, 0.0, LN3], [LN3, -LN3, 0.0], [-LN3, -LN3, -LN3]],
                      dtype=torch.float64)
HAND_LABELS = torch.tensor([1, 0, 2])
# after step 1, g = pos / (neg + 1e-10) = [1, 0.6] up to the release's 1e-10 guard, and
# r = f(g) = [sigmoid(12 (g1 - 0.8)), sigmoid(12 (g2 - 0.8))] ~ [s(2.4), s(-2.4)]
HAND_R = (sigmoid(12 * (0.5 / (0.5 + 1e-10) - 0.8)), sigmoid(12 * (0.75 / (1.25 + 1e-10) - 0.8)))


def test_eqlv2_first_step_is_bce_and_accumulates_hand_values():
    loss = build_loss("eqlv2", num_classes=2)
    value, grad = loss_and_grad(loss, HAND_Z, HAND_LABELS)
    # no statistics yet: w = 1. BCE terms: row 0 ln2 + ln2 + ln4; row 1 2 ln(4/3) + ln2;
    # row 2 2 ln(4/3) + ln4. Sum 7 ln2 + 4 ln(4/3), divided by N = 3.
    assert value.item() == pytest.approx((7 * LN2 + 4 * math.log(4 / 3)) / 3, rel=1e-12)
    p = torch.tensor([[0.5, 0.5, 0.75], [0.75, 0.25, 0.5], [0.25, 0.25, 0.25]],
                     dtype=torch.float64)
    t = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(grad, (p - t) / 3, atol=1e-15)
    # accumulators (foreground columns only), |p - t| summed, not divided by N:
    #   col 1: pos = |1/2 - 1| = 1/2 (row 0); neg = 1/4 + 1/4 = 1/2 (rows 1, 2)
    #   col 2: pos = |1/4 - 1| = 3/4 (row 2); neg = 3/4 + 1/2 = 5/4 (rows 0, 1)
    assert loss.pos_grad.tolist() == pytest.approx([0.5, 0.75], abs=1e-15)
    assert loss.neg_grad.tolist() == pytest.approx([0.5, 1.25], abs=1e-15)
    assert int(loss.updates) == 1
    q, r = loss.column_weights()
    r1, r2 = HAND_R
    assert r.tolist() == pytest.approx([1.0, r1, r2], rel=1e-12)
    assert q.tolist() == pytest.approx([1.0, 1 + 4 * (1 - r1), 1 + 4 * (1 - r2)], rel=1e-12)
    assert (r1, r2) == pytest.approx((sigmoid(2.4), sigmoid(-2.4)), rel=1e-8)


def test_eqlv2_second_step_weights_value_gradient_and_accumulators():
    loss = build_loss("eqlv2", num_classes=2)
    loss(HAND_Z, HAND_LABELS)  # step 1: see the test above
    r1, r2 = HAND_R
    q1, q2 = 1 + 4 * (1 - r1), 1 + 4 * (1 - r2)
    value, grad = loss_and_grad(loss, HAND_Z, HAND_LABELS)
    # background column weight 1; fg columns q on the target, r off it:
    #   row 0 (label 1): ln2 + q1 ln2 + r2 ln4
    #   row 1 (bg):      ln(4/3) + r1 ln(4/3) + r2 ln2
    #   row 2 (label 2): ln(4/3) + r1 ln(4/3) + q2 ln4
    l43 = math.log(4 / 3)
    total = (LN2 + q1 * LN2 + r2 * 2 * LN2) + (l43 + r1 * l43 + r2 * LN2) \
        + (l43 + r1 * l43 + q2 * 2 * LN2)
    assert value.item() == pytest.approx(total / 3, rel=1e-12)
    expected = torch.tensor(
        [
            [0.5, q1 * -0.5, r2 * 0.75],
            [-0.25, r1 * 0.25, r2 * 0.5],
            [0.25, r1 * 0.25, q2 * -0.75],
        ],
        dtype=torch.float64,
    ) / 3
    assert torch.allclose(grad, expected, atol=1e-12)
    # step 2 adds the weighted magnitudes, with the weights used in step 2
    assert loss.pos_grad.tolist() == pytest.approx([0.5 + q1 * 0.5, 0.75 + q2 * 0.75], rel=1e-12)
    assert loss.neg_grad.tolist() == pytest.approx([0.5 + r1 * 0.5, 1.25 + r2 * 1.25], rel=1e-12)
    assert int(loss.updates) == 2


def eqlv2_reference(batches, c, gamma=12.0, mu=0.8, alpha=4.0):
    """Loop over batches, rows and columns; returns per-batch (loss, grad) and the final
    accumulators. Background column unweighted, first batch unweighted."""
    pos, neg = [0.0] * c, [0.0] * c
    out = []
    for step, (z, labels) in enumerate(batches):
        n = len(z)
        r_w = [1.0] * (c + 1)
        if step > 0:
            for j in range(c):
                g = pos[j] / (neg[j] + 1e-10)
                r_w[j + 1] = 1.0 / (1.0 + math.exp(-gamma * (g - mu)))
        q_w = [1.0 + alpha * (1.0 - r) for r in r_w]
        total = 0.0
        grad = [[0.0] * (c + 1) for _ in range(n)]
        add_pos, add_neg = [0.0] * c, [0.0] * c
        for i in range(n):
            for j in range(c + 1):
                p = sigmoid(z[i][j])
                if j == labels[i]:
                    w = q_w[j]
                    total += -w * math.log(p)
                    grad[i][j] = w * (p - 1.0) / n
                    if j > 0:
                        add_pos[j - 1] += w * (1.0 - p)
                else:
                    w = r_w[j]
                    total += -w * math.log(1.0 - p)
                    grad[i][j] = w * p / n
                    if j > 0:
                        add_neg[j - 1] += w * p
        pos = [a + b for a, b in zip(pos, add_pos, strict=True)]
        neg = [a + b for a, b in zip(neg, add_neg, strict=True)]
        out.append((total / n, torch.tensor(grad, dtype=torch.float64)))
    return out, pos, neg


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eqlv2_matches_loop_reference_over_steps(dtype):
    c = 6
    batches = [random_batch(20, c, seed=s, scale=2.0) for s in range(4)]
    loss = build_loss("eqlv2", num_classes=c, gamma=10.0, mu=0.7, alpha=3.0)
    ref, pos, neg = eqlv2_reference([(z.tolist(), y.tolist()) for z, y in batches], c,
                                    gamma=10.0, mu=0.7, alpha=3.0)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for (z, y), (ref_value, ref_grad) in zip(batches, ref, strict=True):
        value, grad = loss_and_grad(loss, z.to(dtype), y)
        assert value.dtype == dtype and grad.dtype == dtype
        assert value.item() == pytest.approx(ref_value, rel=tol)
        assert torch.allclose(grad.double(), ref_grad, atol=tol)
    assert loss.pos_grad.tolist() == pytest.approx(pos, rel=tol)
    assert loss.neg_grad.tolist() == pytest.approx(neg, rel=tol)
    assert loss.pos_grad.dtype == torch.float64


def test_eqlv2_eval_mode_freezes_statistics_and_state_dict_round_trips():
    loss = build_loss("eqlv2", num_classes=4)
    for s in range(2):
        loss(*random_batch(12, 4, seed=s))
    saved = {k: v.clone() for k, v in loss.state_dict().items()}
    assert set(saved) == {"pos_grad", "neg_grad", "updates"}
    loss.eval()
    logits, labels = random_batch(12, 4, seed=9)
    loss(logits, labels)
    assert all(torch.equal(saved[k], v) for k, v in loss.state_dict().items())
    fresh = build_loss("eqlv2", num_classes=4)
    fresh.load_state_dict(saved)
    fresh.eval()
    assert torch.equal(fresh(logits, labels), loss(logits, labels))
    assert loss.to(torch.device("cpu")).pos_grad.device.type == "cpu"


def test_eqlv2_gradcheck():
    # statistics frozen (eval mode) after a few updates: the weights are constants
    loss = build_loss("eqlv2", num_classes=5)
    for s in range(3):
        loss(*random_batch(16, 5, seed=s))
    _, r = loss.column_weights()
    assert (r[1:] < 0.999).any()  # the weights are not trivially 1
    loss.eval()
    logits, labels = random_batch(10, 5, seed=7, scale=1.5)
    z = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (z,))


def test_eqlv2_scores_and_bg_factor():
    logits, _ = random_batch(6, 3)
    p = torch.sigmoid(logits)
    plain = build_loss("eqlv2", num_classes=3, bg_factor=False).scores(logits)
    assert torch.allclose(plain, p[:, 1:])
    factored = build_loss("eqlv2", num_classes=3).scores(logits)  # the release's default
    assert torch.allclose(factored, p[:, 1:] * (1 - p[:, :1]))


def test_eqlv2_half_precision_and_empty_batch():
    loss = build_loss("eqlv2", num_classes=3)
    logits, labels = random_batch(8, 3)
    value = loss(logits.to(torch.bfloat16), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    empty = torch.zeros(0, 4, requires_grad=True)
    assert loss(empty, torch.zeros(0, dtype=torch.long)).item() == 0.0


# --------------------------------------------------------------------------- Seesaw
# (these pin layout=single_softmax; the release layout: tests/test_losses_release.py)

# C = 3, columns [bg, 1, 2, 3]; counts N = [bg 100, 16, 4, 1], p = 0.5, q = 2, eps = 0.01.
#   row 0, label 1: z = [ln4, 0, ln2, 0]; sigma (fg softmax) = [1/4, 1/2, 1/4]
#     M = [-, 1, (4/16)^.5 = 1/2, (1/16)^.5 = 1/4]; C = [-, 1, (1/2 / 1/4)^2 = 4, 1]
#     z + log S = [ln4, 0, ln4, -ln4] -> e^ = [4, 1, 4, 1/4] -> CE = ln(9.25)
#   row 1, label 2: z = [0, 0, 0, ln8]; sigma = [1/10, 1/10, 8/10]
#     M = [-, 1 (16 > 4), 1, (1/4)^.5 = 1/2]; C = [-, 1, 1, (8/10 / 1/10)^2 = 64]
#     e^(z + log S) = [1, 1, 1, 8 * 32] -> CE = ln(259)
#   row 2, label 3: z = [0, ln150, ln99, 0]; sigma = [0.6, 0.396, 0.004], sigma_3 -> eps
#     M = 1 (N_3 is the smallest); C = [-, (0.6 / 0.01)^2 = 3600, 39.6^2 = 1568.16, 1]
#     e^ = [1, 540000, 155247.84, 1] -> CE = ln(695249.84)
#   row 3, bg: z = [0, ln3, 0, 0] -> plain CE = ln 6
SEESAW_Z = torch.tensor(
    [
        [math.log(4), 0.0, LN2, 0.0],
        [0.0, 0.0, 0.0, math.log(8)],
        [0.0, math.log(150), math.log(99), 0.0],
        [0.0, LN3, 0.0, 0.0],
    ],
    dtype=torch.float64,
)
SEESAW_LABELS = torch.tensor([1, 2, 3, 0])


def hand_seesaw_loss():
    loss = build_loss("seesaw", num_classes=3, layout="single_softmax", p=0.5, q=2.0)
    loss.cum_samples.copy_(torch.tensor([100.0, 16.0, 4.0, 1.0]))
    return loss.eval()  # counts stay as set


def test_seesaw_hand_factors():
    m, c = hand_seesaw_loss().factors(SEESAW_Z, SEESAW_LABELS)
    expected_m = [[1, 1, 0.5, 0.25], [1, 1, 1, 0.5], [1, 1, 1, 1], [1, 1, 1, 1]]
    expected_c = [[1, 1, 4, 1], [1, 1, 1, 64], [1, 3600, 1568.16, 1], [1, 1, 1, 1]]
    assert torch.allclose(m, torch.tensor(expected_m, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(c, torch.tensor(expected_c, dtype=torch.float64), rtol=1e-9)


def test_seesaw_hand_value_and_gradient():
    loss = hand_seesaw_loss()
    value, grad = loss_and_grad(loss, SEESAW_Z, SEESAW_LABELS)
    expected = (math.log(9.25) + math.log(259) + math.log(695249.84) + math.log(6)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-12)
    # factors are constants for autograd: grad = (softmax(z + log S) - onehot) / N
    exps = [[4, 1, 4, 0.25], [1, 1, 1, 256], [1, 540000, 155247.84, 1], [1, 3, 1, 1]]
    rows = []
    for e, label in zip(exps, SEESAW_LABELS.tolist(), strict=True):
        rows.append([v / sum(e) - (1.0 if j == label else 0.0) for j, v in enumerate(e)])
    assert torch.allclose(grad, torch.tensor(rows, dtype=torch.float64) / 4, atol=1e-12)


def test_seesaw_without_factors_is_softmax_ce():
    logits, labels = random_batch(16, 5, seed=4)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    loss = build_loss("seesaw", num_classes=5, layout="single_softmax", p=0.0, q=0.0)
    assert loss(logits, labels).item() == pytest.approx(plain.item(), rel=1e-12)
    # first batch with equal counts and the target ahead of every other class: no factor
    same = build_loss("seesaw", num_classes=2, layout="single_softmax")
    z = torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    assert same(z, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(z, y).item(), rel=1e-12)


def test_seesaw_counts_online_before_the_loss_default_p():
    loss = build_loss("seesaw", num_classes=3, layout="single_softmax", q=0.0)
    labels = torch.tensor([1, 1, 1, 1, 2, 0, 0])
    z = torch.zeros(7, 4, dtype=torch.float64)
    value, grad = loss_and_grad(loss, z, labels)
    # counts include this batch: N = [bg 2, 4, 1, 0 -> clamped 1]
    assert loss.cum_samples.tolist() == [2.0, 4.0, 1.0, 0.0]
    # label-1 rows: M = [1, 1, (1/4)^0.8, (1/4)^0.8]; label-2 row: N_3 (1) = N_2 -> 1
    m = 0.25 ** 0.8
    ce_fg1 = -math.log(1 / (2 + 2 * m))
    assert value.item() == pytest.approx((4 * ce_fg1 + 3 * math.log(4)) / 7, rel=1e-12)
    s = 2 + 2 * m
    assert grad[0].tolist() == pytest.approx([1 / s / 7, (1 / s - 1) / 7, m / s / 7, m / s / 7])
    loss(z, labels)
    assert loss.cum_samples.tolist() == [4.0, 8.0, 2.0, 0.0]


def seesaw_reference(z, labels, counts, p, q, eps):
    """Row-by-row loss and gradient from the equations (single C + 1 softmax)."""
    n, k = len(z), len(z[0])
    total, grad = 0.0, []
    for i in range(n):
        y = labels[i]
        adjusted = list(z[i])
        if y > 0:
            fg = [math.exp(v) for v in z[i][1:]]
            sigma = [0.0] + [v / sum(fg) for v in fg]
            for j in range(1, k):
                if j == y:
                    continue
                ny, nj = max(counts[y], 1.0), max(counts[j], 1.0)
                mit = (nj / ny) ** p if nj < ny else 1.0
                ratio = sigma[j] / max(sigma[y], eps)
                comp = ratio ** q if ratio > 1 else 1.0
                adjusted[j] += math.log(mit * comp)
        top = max(adjusted)
        e = [math.exp(v - top) for v in adjusted]
        total += -math.log(e[y] / sum(e))
        grad.append([(v / sum(e) - (1.0 if j == y else 0.0)) / n for j, v in enumerate(e)])
    return total / n, torch.tensor(grad, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seesaw_matches_loop_reference_over_steps(dtype):
    c = 7
    loss = build_loss("seesaw", num_classes=c, layout="single_softmax")
    counts = [0.0] * (c + 1)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for s in range(3):
        logits, labels = random_batch(30, c, seed=20 + s, fg_fraction=0.6)
        for y in labels.tolist():
            counts[y] += 1
        value, grad = loss_and_grad(loss, logits.to(dtype), labels)
        ref_value, ref_grad = seesaw_reference(logits.tolist(), labels.tolist(), counts,
                                               0.8, 2.0, 0.01)
        assert value.dtype == dtype
        assert value.item() == pytest.approx(ref_value, rel=tol)
        assert torch.allclose(grad.double(), ref_grad, atol=tol)
    assert loss.cum_samples.tolist() == counts


@pytest.mark.parametrize("q", [0.0, 2.0])
def test_seesaw_gradcheck(q):
    # counts frozen (eval mode). The compensation factor uses detached probabilities (the
    # release's stop-gradient), so the loss is differentiated with C held constant: with
    # q = 2 the fg rows are chosen with the target ahead of every other class (C = 1 near
    # the point), where that is the exact derivative.
    loss = build_loss("seesaw", num_classes=4, layout="single_softmax", q=q)
    loss.cum_samples.copy_(torch.tensor([50.0, 30.0, 10.0, 3.0, 0.0]))
    loss.eval()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3, 4, 0, 0, 2, 1])
    z[torch.arange(8), labels] += 6.0
    z = z.requires_grad_(True)
    m, c = loss.factors(z, labels)
    assert (m < 1).any() and torch.equal(c, torch.ones_like(c))
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (z,))


def test_seesaw_state_dict_scores_and_half_precision():
    loss = build_loss("seesaw", num_classes=3, layout="single_softmax")
    logits, labels = random_batch(9, 3, seed=3)
    loss(logits, labels)
    assert set(loss.state_dict()) == {"cum_samples"}
    assert loss.state_dict()["cum_samples"].sum().item() == 9
    scores = loss.scores(logits)
    assert torch.allclose(scores, torch.softmax(logits, 1)[:, 1:])
    value = loss(logits.to(torch.bfloat16), labels)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert loss(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).item() == 0.0


# --------------------------------------------------------------------------- pipeline


def test_both_train_in_the_pipeline(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "acsl_cli", "train", "schedule=smoke", "loss=eqlv2,seesaw",
         "progress=false", f"output_root={tmp_path}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert sorted(p.name for p in (run / "heads").iterdir()) == ["eqlv2", "seesaw"]
