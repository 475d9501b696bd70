"""Loss zoo: values and gradients against hand-derived numbers and the papers' equations.

References here are written independently of the implementations (plain Python loops over
rows and columns, closed forms worked out by hand), never copied from running the code.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from acsl_cli.errors import ConfigError
from acsl_cli.losses import STAT_NAMES, available_losses, build_loss, loss_class
from acsl_cli.losses.acsl_forms import FORMS, fused_acsl, threshold_below
from acsl_cli.losses.bags import assign_groups

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def onehot(labels: torch.Tensor, columns: int, dtype=torch.float64) -> torch.Tensor:
    out = torch.zeros(labels.shape[0], columns, dtype=dtype)
    out[torch.arange(labels.shape[0]), labels] = 1
    return out


def loss_and_grad(loss, logits: torch.Tensor, labels: torch.Tensor):
    z = logits.clone().requires_grad_(True)
    value = loss(z, labels)
    value.backward()
    return value.detach(), z.grad


def random_batch(n: int, c: int, seed: int = 0, fg_fraction: float = 0.4, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c + 1, generator=g, dtype=torch.float64) * scale - 1.0
    labels = torch.randint(1, c + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) > fg_fraction] = 0
    return logits, labels


def frequencies_for(c: int) -> list[str]:
    return ["rcf"[i % 3] for i in range(c)]


# --------------------------------------------------------------------------- registry


def test_all_losses_registered_with_valid_needs_and_yaml():
    assert available_losses() == ["acsl", "bags", "bce", "ecm", "efl", "eql", "eqlv2", "federated",
                                 "gol", "seesaw", "softmax_ce"]
    for name in available_losses():
        cls = loss_class(name)
        assert set(cls.needs) <= set(STAT_NAMES), name
        params = inspect.signature(cls.__init__).parameters
        assert "num_classes" in params
        assert set(cls.needs) <= set(params), name
        cfg = OmegaConf.load(ROOT / "conf" / "loss" / f"{name}.yaml")
        assert cfg.name == name
        keys = set(cfg.keys()) - {"name"}
        assert keys <= set(params), (name, keys - set(params))
        assert not keys & set(STAT_NAMES), "statistics come from the engine, not the yaml"


def test_yaml_interpolations():
    """Composed configs: xi from the top level, dataset-dependent defaults per dataset."""
    from acsl_cli.config import load_config

    assert load_config(["loss=acsl", "xi=0.3"]).loss.xi == 0.3
    assert load_config(["loss=eql", "dataset=lvis_v1"]).loss.lambda_ == 0.0011
    assert load_config(["loss=eql", "dataset=lvis_v0.5"]).loss.lambda_ == 0.00177
    assert list(load_config(["loss=bags", "dataset=lvis_v1"]).loss.bins) == [10, 100, 1000]
    assert list(load_config(["loss=bags"]).loss.bins) == [10, 100]  # synthetic: max 400


def test_build_loss_rejects_unknown_params_and_names():
    with pytest.raises(ConfigError, match="zeta"):
        build_loss("acsl", zeta=1.0)
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        build_loss("focal")


# --------------------------------------------------------------------------- softmax / bce


def test_softmax_ce_hand_value_and_torch():
    loss = build_loss("softmax_ce")
    # one RoI of label 1, logits [0, ln 3]: p(label 1) = 3 / 4 -> CE = ln(4 / 3)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    assert loss(z, torch.tensor([1])).item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-12)
    logits, labels = random_batch(16, 5)
    assert torch.allclose(loss(logits, labels), F.cross_entropy(logits, labels))
    scores = loss.scores(logits)
    assert scores.shape == (16, 5)
    assert torch.allclose(scores, torch.softmax(logits, 1)[:, 1:])


def test_bce_hand_value_and_gradient():
    loss = build_loss("bce")
    # a background RoI with logits 0 everywhere: 2 columns x ln 2
    z = torch.zeros(1, 2, dtype=torch.float64)
    assert loss(z, torch.tensor([0])).item() == pytest.approx(2 * LN2, rel=1e-12)
    logits, labels = random_batch(10, 4)
    value, grad = loss_and_grad(loss, logits, labels)
    expected = 0.0
    for i in range(10):
        for j in range(5):
            p = sigmoid(logits[i, j].item())
            t = 1.0 if j == labels[i].item() else 0.0
            expected -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert value.item() == pytest.approx(expected / 10, rel=1e-10)
    target = onehot(labels, 5)
    assert torch.allclose(grad, (torch.sigmoid(logits) - target) / 10, atol=1e-12)


def test_sigmoid_scores_and_bg_factor():
    logits, _ = random_batch(6, 3)
    p = torch.sigmoid(logits)
    for name, extra in [("bce", {}), ("acsl", "acsl"), ("eql", "eql"), ("federated", "fed")]:
        stats = {}
        if extra == "acsl":
            stats = {"frequencies": ["r", "c", "f"]}
        elif extra == "eql":
            stats = {"image_counts": [1, 2, 3], "num_images": 10}
        elif extra == "fed":
            stats = {"image_counts": [1, 2, 3]}
        plain = build_loss(name, **stats).scores(logits)
        assert torch.allclose(plain, p[:, 1:]), name
        factored = build_loss(name, bg_factor=True, **stats).scores(logits)
        assert torch.allclose(factored, p[:, 1:] * (1 - p[:, :1])), name


# --------------------------------------------------------------------------- ACSL


def acsl_reference(z, labels, xi, bg_weights=None):
    """Paper eq. 5-6 by a plain loop; returns (loss, gradient by eq. 7). ``bg_weights``:
    rows of W for background RoIs in batch order (official mode)."""
    n, k_cols = len(z), len(z[0])
    total = 0.0
    grad = [[0.0] * k_cols for _ in range(n)]
    bg_seen = 0
    for i in range(n):
        k = labels[i]
        for j in range(k_cols):
            p = sigmoid(z[i][j])
            if k == 0 and bg_weights is not None:
                w = bg_weights[bg_seen][j]
            else:
                w = 1.0 if (j == k or p >= xi) else 0.0
            if j == k:
                total += -w * math.log(p)
                grad[i][j] = (p - 1.0) / n
            else:
                total += -w * math.log(1.0 - p)
                grad[i][j] = w * p / n
        if k == 0:
            bg_seen += 1
    return total / n, torch.tensor(grad, dtype=torch.float64)


def test_acsl_hand_derived_2x3():
    # xi = 0.7. Row 0 (label 1): p = [0.8, 0.5, 0.2] -> W = [1, 1, 0];
    #   loss = -ln(1 - 0.8) - ln(0.5) = ln 10.
    # Row 1 (background, adaptive): p = [0.6, 0.75, 0.1] -> W = [1, 1, 0];
    #   loss = -ln(0.6) - ln(1 - 0.75) = ln(20 / 3).
    # Mean over N = 2: ln(200 / 3) / 2. Gradient / 2: row 0 [0.8, 0.5 - 1, 0] / 2,
    #   row 1 [0.6 - 1, 0.75, 0] / 2.
    z = torch.tensor(
        [
            [math.log(4.0), 0.0, -math.log(4.0)],
            [math.log(1.5), math.log(3.0), -math.log(9.0)],
        ],
        dtype=torch.float64,
    )
    value, grad = loss_and_grad(build_loss("acsl", xi=0.7, bg_mode="adaptive"), z,
                                  torch.tensor([1, 0]))
    assert value.item() == pytest.approx(math.log(200.0 / 3.0) / 2, rel=1e-12)
    expected = torch.tensor([[0.4, -0.25, 0.0], [-0.2, 0.375, 0.0]], dtype=torch.float64)
    assert torch.allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_acsl_matches_loop_reference_adaptive(dtype):
    logits, labels = random_batch(24, 9, seed=3)
    value, grad = loss_and_grad(build_loss("acsl", xi=0.6, bg_mode="adaptive"),
                                logits.to(dtype), labels)
    ref_value, ref_grad = acsl_reference(logits.tolist(), labels.tolist(), 0.6)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert value.dtype == dtype and grad.dtype == dtype
    assert value.item() == pytest.approx(ref_value, rel=tol)
    assert torch.allclose(grad.double(), ref_grad, atol=tol)


def test_acsl_large_logits_are_finite_and_exact():
    # |z| = 40: sigmoid rounds to 0 or 1 in float32; BCE must still be softplus-exact.
    z = torch.tensor([[40.0, -40.0, 40.0], [-40.0, 40.0, -40.0]])
    value, grad = loss_and_grad(build_loss("acsl", bg_mode="adaptive"), z, torch.tensor([1, 1]))
    # row 0: target col 1 (-ln sigmoid(-40) ~ 40), cols 0 and 2 kept (p ~ 1): 40 + 40
    # row 1: target col 1 (~ e^-40), cols 0 and 2 dropped. Mean: (120 + ~0) / 2.
    assert value.item() == pytest.approx(60.0, rel=1e-6)
    assert torch.isfinite(grad).all()


def test_acsl_tiny_xi_is_bce():
    logits, labels = random_batch(20, 6, seed=5)
    acsl_value, acsl_grad = loss_and_grad(build_loss("acsl", xi=1e-12, bg_mode="adaptive"),
                                          logits, labels)
    bce_value, bce_grad = loss_and_grad(build_loss("bce"), logits, labels)
    assert acsl_value.item() == pytest.approx(bce_value.item(), rel=1e-12)
    assert torch.allclose(acsl_grad, bce_grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_acsl_gradcheck(bg_mode):
    # p kept far from xi = 0.7 so the piecewise-constant mask does not flip under eps;
    # 7 background rows -> official mode suppresses no random rows (int(0.7) = 0).
    g = torch.Generator().manual_seed(0)
    choices = torch.tensor([-3.0, -2.0, 2.0, 3.0], dtype=torch.float64)
    logits = choices[torch.randint(0, 4, (12, 6), generator=g)].requires_grad_(True)
    labels = torch.tensor([1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0])
    loss = build_loss("acsl", bg_mode=bg_mode, frequencies=list("rcfrc"))
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,))


def replay_official_draws(n_bg: int, freqs: list[str], generator: torch.Generator):
    """Documented draw order, written out: randperm for common rows, then for rare rows;
    returns the dense (n_bg, C + 1) W of the background rows."""
    common = torch.randperm(n_bg, generator=generator)[: int(0.1 * n_bg)].tolist()
    rare = torch.randperm(n_bg, generator=generator)[: int(0.01 * n_bg)].tolist()
    weights = torch.zeros(n_bg, len(freqs) + 1, dtype=torch.bool)
    for row in range(n_bg):
        weights[row, 0] = True
        for label, group in enumerate(freqs, start=1):
            if group == "f" or (group == "c" and row in common) or (group == "r" and row in rare):
                weights[row, label] = True
    return weights


def official_bg_rows(n_bg: int, c: int, seed: int):
    """A batch of n_bg background RoIs (all logits mildly negative, p < xi) plus 5 fg."""
    logits, _ = random_batch(n_bg + 5, c, seed=seed, scale=0.5)
    logits = logits - 2.0
    labels = torch.zeros(n_bg + 5, dtype=torch.long)
    labels[:5] = torch.arange(1, 6)
    return logits, labels


@pytest.mark.parametrize("n_bg, n_common, n_rare", [(250, 25, 2), (99, 9, 0), (100, 10, 1)])
def test_acsl_official_counts(n_bg, n_common, n_rare):
    c = 9
    freqs = frequencies_for(c)  # labels 1,4,7 rare; 2,5,8 common; 3,6,9 frequent
    logits, labels = official_bg_rows(n_bg, c, seed=n_bg)
    # an adaptive-rule hit on a background row must be discarded in official mode
    logits[10, 1] = 5.0
    loss = build_loss("acsl", bg_mode="official", frequencies=freqs, seed=1)
    _, grad = loss_and_grad(loss, logits, labels)
    kept = grad[labels == 0] != 0  # W = 1 exactly where the gradient is non-zero
    rare, common, freq = [1, 4, 7], [2, 5, 8], [3, 6, 9]
    assert kept[:, 0].all()
    assert kept[:, freq].all()
    rare_rows = kept[:, rare].any(1)
    common_rows = kept[:, common].any(1)
    assert int(rare_rows.sum()) == n_rare
    assert int(common_rows.sum()) == n_common
    # a drawn row gets the whole group, an undrawn row none of it
    assert (kept[:, rare].all(1) == rare_rows).all()
    assert (kept[:, common].all(1) == common_rows).all()
    # the same draws replayed by hand
    replay = replay_official_draws(n_bg, freqs, torch.Generator().manual_seed(1))
    assert torch.equal(kept, replay)


def test_acsl_official_matches_row_by_row_reference_over_calls():
    c = 9
    freqs = frequencies_for(c)
    loss = build_loss("acsl", bg_mode="official", frequencies=freqs, seed=7, xi=0.5)
    replay = torch.Generator().manual_seed(7)
    for call in range(2):  # the second call must continue the same random stream
        logits, labels = random_batch(160, c, seed=10 + call, fg_fraction=0.25)
        n_bg = int((labels == 0).sum())
        bg_weights = replay_official_draws(n_bg, freqs, replay).double().tolist()
        value, grad = loss_and_grad(loss, logits, labels)
        ref_value, ref_grad = acsl_reference(logits.tolist(), labels.tolist(), 0.5, bg_weights)
        assert value.item() == pytest.approx(ref_value, rel=1e-10)
        assert torch.allclose(grad, ref_grad, atol=1e-12)


def test_acsl_seed_repeats_and_differs():
    c = 9
    freqs = frequencies_for(c)
    logits, labels = official_bg_rows(300, c, seed=0)

    def run(seed):
        return build_loss("acsl", bg_mode="official", frequencies=freqs, seed=seed)(logits, labels)

    assert run(0).item() == run(0).item()
    assert run(0).item() != run(1).item()
    w0 = replay_official_draws(300, freqs, torch.Generator().manual_seed(0))
    w1 = replay_official_draws(300, freqs, torch.Generator().manual_seed(1))
    assert not torch.equal(w0, w1)


def test_acsl_needs_and_default_mode():
    loss = build_loss("acsl", bg_mode="adaptive")  # adaptive needs no statistics
    assert loss.num_classes is None and loss_class("acsl").needs_for("adaptive") == ()
    assert loss_class("acsl").needs_for("official") == ("frequencies",)
    official = build_loss("acsl", frequencies=["r", "c", "f"])
    assert official.bg_mode == "official" and official.num_classes == 3
    # the code's default is the config's: conf/loss/acsl.yaml says official
    default = inspect.signature(loss_class("acsl").__init__).parameters["bg_mode"].default
    assert default == OmegaConf.load(ROOT / "conf" / "loss" / "acsl.yaml").bg_mode == "official"
    assert loss_class("acsl").needs_for() == ("frequencies",)
    with pytest.raises(ConfigError, match="frequencies"):
        build_loss("acsl")  # official by default: the frequency groups are required


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bg_mode", ["adaptive", "official"])
def test_acsl_suppresses_a_column_whose_p_is_exactly_xi(bg_mode, dtype):
    """p >= xi, not p > xi: z = 0 gives sigmoid(z) = 0.5 = xi exactly in float."""
    assert torch.sigmoid(torch.zeros((), dtype=dtype)).item() == 0.5
    # one foreground RoI of class 1: columns 0 and 2 sit exactly at xi, column 3 just below
    z = torch.tensor([[0.0, 2.0, 0.0, -1e-3]], dtype=dtype)
    loss = build_loss("acsl", xi=0.5, bg_mode=bg_mode, frequencies=["r", "c", "f"])
    value, grad = loss_and_grad(loss, z, torch.tensor([1]))
    # W = [1, 1 (target), 1, 0]: ln 2 + ln(1 + e^-2) + ln 2, over N = 1
    expected = 2 * LN2 + math.log1p(math.exp(-2.0))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert value.item() == pytest.approx(expected, rel=tol)
    assert grad[0].tolist() == pytest.approx([0.5, sigmoid(2.0) - 1.0, 0.5, 0.0], abs=tol)
    assert grad[0, 3].item() == 0.0  # p = sigmoid(-1e-3) < xi: not suppressed
    for form in FORMS:  # both forms of the arithmetic apply the same rule
        zf = z.clone().requires_grad_(True)
        fused_acsl(zf, torch.tensor([1]), threshold_below(0.5, dtype), None, form).backward()
        assert torch.equal(zf.grad, grad), form
    counts, rois = loss.suppression()
    assert counts.tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]] and rois.tolist() == [1, 0, 0]


# --------------------------------------------------------------------------- EQL


def test_eql_hand_weights_and_value():
    # f = [1, 50, 500] / 1000 = [0.001, 0.05, 0.5]; lambda 0.00177 -> only label 1 is tail.
    loss = build_loss("eql", image_counts=[1, 50, 500], num_images=1000, lambda_=0.00177)
    labels = torch.tensor([2, 1, 0])
    expected = torch.tensor(
        [
            [1.0, 0.0, 1.0, 1.0],  # fg of label 2: tail column 1 suppressed
            [1.0, 1.0, 1.0, 1.0],  # fg of label 1: its own (tail) column is the target
            [1.0, 1.0, 1.0, 1.0],  # background RoI: full BCE
        ]
    )
    assert torch.equal(loss.weights(labels), expected)
    # zero logits: every kept term is ln 2 -> (3 + 4 + 4) ln 2 / 3
    value, grad = loss_and_grad(loss, torch.zeros(3, 4, dtype=torch.float64), labels)
    assert value.item() == pytest.approx(11 * LN2 / 3, rel=1e-12)
    assert grad[0, 1] == 0 and grad[2, 1] == pytest.approx(0.5 / 3)


# --------------------------------------------------------------------------- BAGS


def test_bags_group_assignment_and_width():
    counts = [0, 1, 9, 10, 99, 100, 999, 1000, 5000]
    assert assign_groups(counts, [10, 100, 1000]) == [1, 1, 1, 2, 2, 3, 3, 4, 4]
    loss = build_loss("bags", instance_counts=counts)
    assert loss.num_outputs(9) == 9 + 6
    assert loss.group_of_label(torch.tensor([0, 1, 4, 6, 9])).tolist() == [0, 1, 2, 3, 4]
    # layout: [bg, fg | o1, l1, l2, l3 | o2, l4, l5 | o3, l6, l7 | o4, l8, l9]
    assert loss.label_column.tolist() == [0, 3, 4, 5, 7, 8, 10, 11, 13, 14]
    two_groups = build_loss("bags", instance_counts=[3, 700], bins=[500])
    assert two_groups.num_outputs(2) == 2 + 1 + 3


def test_bags_hand_loss_tiny_case():
    # label 1 in group 1 (5 < 10), label 2 in group 2 (>= 10).
    # layout [bg, fg | o1, l1 | o2, l2]; RoIs: label 1 and background.
    # G0: row 0 [0, ln 3] target fg -> ln(4/3); row 1 [ln 3, 0] target bg -> ln(4/3).
    # G1: row 0 positive [0, 0] -> ln 2; row 1 is the only "other" (min(8, 1) = 1),
    #     [ln 4, 0] target others -> ln(5/4); mean (ln 2 + ln(5/4)) / 2 = ln(5/2) / 2.
    # G2: no positives -> 0.
    loss = build_loss("bags", instance_counts=[5, 50], bins=[10])
    ln3, ln4 = math.log(3.0), math.log(4.0)
    z = torch.tensor(
        [[0.0, ln3, 0.0, 0.0, 1.0, -2.0], [ln3, 0.0, ln4, 0.0, 3.0, 0.5]], dtype=torch.float64
    )
    value, grad = loss_and_grad(loss, z, torch.tensor([1, 0]))
    assert value.item() == pytest.approx(math.log(4 / 3) + math.log(2.5) / 2, rel=1e-12)
    assert torch.equal(grad[:, 4:], torch.zeros(2, 2, dtype=torch.float64))


def test_bags_others_sample_size():
    counts = [5, 50, 500]  # bins [10, 100] -> one class per group
    loss = build_loss("bags", instance_counts=counts, bins=[10, 100])
    assert loss.others_sample_size(1, 20) == 8
    assert loss.others_sample_size(3, 10) == 10
    logits = torch.randn(21, 3 + 1 + 4, dtype=torch.float64)
    for n_pos, expected_rows in [(1, 1 + 8), (3, 3 + 18)]:
        labels = torch.zeros(21, dtype=torch.long)
        labels[:n_pos] = 1
        labels[n_pos : n_pos + 2] = 3  # other groups' fg RoIs are "others" for group 1
        _, grad = loss_and_grad(loss, logits, labels)
        rows_in_group1 = (grad[:, 2:4] != 0).any(1)  # group 1 block: [o1, l1]
        assert int(rows_in_group1.sum()) == expected_rows
        assert rows_in_group1[:n_pos].all()


def test_bags_merged_scores():
    counts = [0, 1, 9, 10, 99, 100, 999, 1000, 5000]
    loss = build_loss("bags", instance_counts=counts)
    logits = torch.randn(5, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scores = loss.scores(logits)
    assert scores.shape == (5, 9)
    blocks = {1: (2, [0, 1, 2]), 2: (6, [3, 4]), 3: (9, [5, 6]), 4: (12, [7, 8])}
    for i in range(5):
        row = logits[i].tolist()
        p_fg = math.exp(row[1]) / (math.exp(row[0]) + math.exp(row[1]))
        for start, classes in blocks.values():
            block = row[start : start + 1 + len(classes)]
            p_others = math.exp(block[0]) / sum(math.exp(v) for v in block)
            total = float(scores[i, classes].sum())
            assert total == pytest.approx(p_fg * (1 - p_others), rel=1e-10)


def _normal_draw(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    """What N(0, 0.01^2) draws from the global generator seeded with ``seed``."""
    torch.manual_seed(seed)
    return torch.empty(shape).normal_(0.0, 0.01)


def test_bags_classifier_starts_fresh_by_default_as_the_release():
    """The release's wider fc_cls keeps its own init (normal std 0.01, bias 0): the
    stage-1 layer does not fit it and is skipped, so no row of it is copied."""
    loss = build_loss("bags", instance_counts=[5, 50, 500], bins=[10, 100])
    assert loss.classifier_init == "fresh"
    torch.manual_seed(0)
    stage1 = torch.nn.Linear(4, 4)
    layer = torch.nn.Linear(4, loss.num_outputs(3))  # 3 + 1 + 4 = 8 rows
    torch.manual_seed(11)
    loss.init_classifier(layer, stage1)
    assert torch.equal(layer.weight, _normal_draw(11, (8, 4)))  # every row drawn
    assert torch.equal(layer.bias, torch.zeros(8))
    for row in stage1.weight:
        assert not any(torch.equal(row, w) for w in layer.weight)
    # the draw's statistics on a layer of realistic width (1,230 classes, 1024 features)
    wide = build_loss("bags", instance_counts=[5] * 400 + [50] * 400 + [500] * 430,
                      bins=[10, 100])
    big = torch.nn.Linear(1024, wide.num_outputs(1230))
    torch.manual_seed(3)
    wide.init_classifier(big, torch.nn.Linear(1024, 1231))
    w = big.weight.double()
    n = w.numel()  # 1,235 x 1,024 draws: mean within 4 standard errors, std within 1 %
    assert abs(w.mean().item()) < 4 * 0.01 / math.sqrt(n)
    assert abs(w.std().item() / 0.01 - 1) < 0.01
    assert big.bias.abs().max().item() == 0


def test_bags_stage1_rows_option_copies_class_and_background_rows():
    loss = build_loss("bags", instance_counts=[5, 50, 500], bins=[10, 100],
                      classifier_init="stage1_rows")
    torch.manual_seed(0)
    stage1 = torch.nn.Linear(4, 4)
    layer = torch.nn.Linear(4, loss.num_outputs(3))
    torch.manual_seed(11)
    loss.init_classifier(layer, stage1)
    drawn = _normal_draw(11, (8, 4))
    # layout [bg, fg | o1, l1 | o2, l2 | o3, l3]: stage-1 rows 0..3 (bg, labels 1..3) go to
    # columns 0, 3, 5, 7; the any-foreground and "others" rows keep their draws
    for label, column in enumerate([0, 3, 5, 7]):
        assert torch.equal(layer.weight[column], stage1.weight[label])
        assert layer.bias[column] == stage1.bias[label]
    for column in [1, 2, 4, 6]:
        assert layer.bias[column] == 0 and torch.equal(layer.weight[column], drawn[column])
    # without a stage-1 layer both options draw every row
    torch.manual_seed(11)
    loss.init_classifier(layer, None)
    assert torch.equal(layer.weight, drawn) and not layer.bias.any()


def test_bags_classifier_init_is_checked_and_the_yaml_default_is_the_release():
    conf = Path(__file__).resolve().parents[1] / "conf" / "loss" / "bags.yaml"
    assert OmegaConf.load(conf).classifier_init == "fresh"
    with pytest.raises(ConfigError, match="classifier_init must be one of fresh, stage1_rows"
                       ) as err:
        build_loss("bags", instance_counts=[5, 50], bins=[10], classifier_init="copy")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- Federated


def test_federated_selection_and_gradient():
    counts = [10] * 90 + [0] * 10  # labels 91..100 have no train image: never sampled
    loss = build_loss("federated", image_counts=counts, num_sample_classes=50, seed=3)
    labels = torch.tensor([0, 5, 0, 17, 95, 0, 5])
    selected = loss.select_classes(labels)
    assert selected.numel() == 50 and selected.unique().numel() == 50
    assert {5, 17, 95} <= set(selected.tolist())
    assert not set(selected.tolist()) & (set(range(91, 101)) - {95})
    z = torch.zeros(7, 101, dtype=torch.float64)
    value, grad = loss_and_grad(build_loss("federated", image_counts=counts, seed=3), z, labels)
    # zero logits: 50 selected columns x ln 2 per RoI, divided by N
    assert value.item() == pytest.approx(50 * LN2, rel=1e-12)
    used = (grad != 0).any(0)
    assert not used[0]
    assert used.sum() == 50 and set(used.nonzero().squeeze(1).tolist()) == set(selected.tolist())
    assert grad[1, 5] == pytest.approx(-0.5 / 7) and grad[0, 5] == pytest.approx(0.5 / 7)


def test_federated_small_c_uses_all_classes():
    loss = build_loss("federated", image_counts=[1] * 30)
    assert loss.select_classes(torch.tensor([0, 3])).tolist() == list(range(1, 31))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, params, needle",
    [
        ("acsl", {"xi": 0.0}, "xi"),
        ("acsl", {"xi": 1.0}, "xi"),
        ("acsl", {"bg_mode": "sometimes"}, "bg_mode"),
        ("acsl", {"bg_mode": "official"}, "frequencies"),
        ("acsl", {"bg_mode": "official", "frequencies": ["r", "x"]}, "frequencies"),
        ("eql", {"num_images": 10}, "image_counts"),
        ("eql", {"image_counts": [1, 2]}, "num_images"),
        ("eql", {"image_counts": [1, 2], "num_images": 10, "num_classes": 3}, "image_counts"),
        ("bags", {}, "instance_counts"),
        ("bags", {"instance_counts": [1, 2, 500]}, r"\[10, 100\)"),
        ("bags", {"instance_counts": [1, 2000], "bins": [10, 5]}, "bins"),
        ("federated", {}, "image_counts"),
    ],
)
def test_bad_config_is_one_line_config_error(name, params, needle):
    with pytest.raises(ConfigError, match=needle) as excinfo:
        build_loss(name, **params)
    assert "\n" not in str(excinfo.value)
