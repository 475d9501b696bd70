"""EQLv2 and Seesaw as the authors release them: values, gradients, state and scores.

The references below are written from the releases' equations in the releases' own
layouts (background = last logit; Seesaw: C class logits then objectness [fg, bg]),
plain Python over rows and columns, then mapped to this project's columns (background
first). They never call the production code, so they also check the layout mapping.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, available_losses, build_loss
from tests.test_losses import loss_and_grad, random_batch

# --------------------------------------------------------------------------- helpers


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(z: float, t: float) -> float:
    return max(z, 0.0) - z * t + math.log1p(math.exp(-abs(z)))


def to_release_label(label: int, c: int) -> int:
    """Ours: 0 = background, 1..C. The releases': 0..C-1 classes, C = background."""
    return c if label == 0 else label - 1


# --------------------------------------------------------------------------- EQLv2


class EQLv2Reference:
    """The release's EQLv2 (background = last of C + 1 sigmoid logits), one call = one step."""

    def __init__(self, c: int, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0):
        self.c, self.gamma, self.mu, self.alpha = c, gamma, mu, alpha
        self.pos: list[float] | None = None  # None until the first call, as the release
        self.neg: list[float] = []

    def weights(self) -> tuple[list[float], list[float]]:
        """(pos_w, neg_w) per column; all ones on the first call; objectness column 1."""
        if self.pos is None:
            return [1.0] * (self.c + 1), [1.0] * (self.c + 1)
        neg_w = [sigmoid(self.gamma * (p / (n + 1e-10) - self.mu))
                 for p, n in zip(self.pos, self.neg, strict=True)] + [1.0]
        return [1.0 + self.alpha * (1.0 - w) for w in neg_w], neg_w

    def step(self, z: list[list[float]], labels: list[int]) -> tuple[float, list[list[float]]]:
        """Loss and dLoss/dz in the release's layout; then the gradient statistics update."""
        n, k = len(z), self.c + 1
        pos_w, neg_w = self.weights()
        if self.pos is None:
            self.pos, self.neg = [0.0] * self.c, [0.0] * self.c
        total, grad = 0.0, []
        new_pos, new_neg = [0.0] * self.c, [0.0] * self.c
        for i in range(n):
            row = []
            for j in range(k):
                t = 1.0 if labels[i] == j else 0.0
                w = pos_w[j] * t + neg_w[j] * (1.0 - t)
                p = sigmoid(z[i][j])
                total += w * bce(z[i][j], t)
                row.append(w * (p - t) / n)
                if j < self.c:  # no statistics for the objectness (background) column
                    g = abs(p - t) * w
                    if t:
                        new_pos[j] += g
                    else:
                        new_neg[j] += g
            grad.append(row)
        self.pos = [a + b for a, b in zip(self.pos, new_pos, strict=True)]
        self.neg = [a + b for a, b in zip(self.neg, new_neg, strict=True)]
        return total / n, grad

    @staticmethod
    def scores(z: list[list[float]]) -> list[list[float]]:
        """The release's get_activation: sigmoid(z_j) * (1 - sigmoid(z_bg)), bg last."""
        return [[sigmoid(v) * (1.0 - sigmoid(row[-1])) for v in row[:-1]] + [sigmoid(row[-1])]
                for row in z]


def eqlv2_to_release(logits: torch.Tensor) -> list[list[float]]:
    """Our (N, C + 1) background-first logits in the release's background-last order."""
    return torch.cat([logits[:, 1:], logits[:, :1]], dim=1).tolist()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eqlv2_value_gradient_and_statistics_over_steps_match_the_release(dtype):
    c = 6
    loss = build_loss("eqlv2", num_classes=c, gamma=12.0, mu=0.8, alpha=4.0)
    ref = EQLv2Reference(c)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for step in range(5):
        logits, labels = random_batch(40, c, seed=100 + step, fg_fraction=0.5)
        value, grad = loss_and_grad(loss, logits.to(dtype), labels)
        ref_value, ref_grad = ref.step(eqlv2_to_release(logits),
                                       [to_release_label(y, c) for y in labels.tolist()])
        ref_grad = torch.tensor(ref_grad, dtype=torch.float64)
        ref_grad = torch.cat([ref_grad[:, -1:], ref_grad[:, :-1]], dim=1)  # back to ours
        assert value.item() == pytest.approx(ref_value, rel=tol)
        assert torch.allclose(grad.double(), ref_grad, atol=tol, rtol=tol)
        assert loss.pos_grad.tolist() == pytest.approx(ref.pos, rel=tol)
        assert loss.neg_grad.tolist() == pytest.approx(ref.neg, rel=tol)
    # the statistics moved the weights away from 1: the later steps were not plain BCE
    pos_w, neg_w = ref.weights()
    assert max(pos_w[:c]) > 1.5 and min(neg_w[:c]) < 0.5


def test_eqlv2_scores_like_the_release_by_default():
    c = 5
    logits, _ = random_batch(12, c, seed=7)
    expected = torch.tensor(EQLv2Reference.scores(eqlv2_to_release(logits)), dtype=torch.float64)
    scores = build_loss("eqlv2", num_classes=c).scores(logits)
    assert torch.allclose(scores, expected[:, :c], atol=1e-12)  # the detector drops bg
    plain = build_loss("eqlv2", num_classes=c, bg_factor=False).scores(logits)
    assert torch.allclose(plain, torch.sigmoid(logits[:, 1:]), atol=1e-12)


# --------------------------------------------------------------------------- Seesaw


class SeesawReference:
    """The release's SeesawLoss: logits (N, C + 2) = C classes, then objectness [fg, bg]."""

    def __init__(self, c: int, p: float = 0.8, q: float = 2.0, eps: float = 1e-2):
        self.c, self.p, self.q, self.eps = c, p, q, eps
        self.cum = [0.0] * (c + 1)  # the release counts background (label C) too

    def step(self, z: list[list[float]], labels: list[int]) -> tuple[float, list[list[float]]]:
        c, n = self.c, len(z)
        for y in labels:  # counted before the loss is formed
            self.cum[y] += 1
        total, grad = 0.0, [[0.0] * (c + 2) for _ in range(n)]
        for i, y in enumerate(labels):
            if y < c:  # seesaw CE over the class logits, foreground RoIs only
                cls = z[i][:c]
                sigma = softmax(cls)
                adjusted = list(cls)
                for j in range(c):
                    if j == y:
                        continue
                    ratio_n = max(self.cum[j], 1.0) / max(self.cum[y], 1.0)
                    m = ratio_n ** self.p if ratio_n < 1.0 else 1.0
                    ratio_s = sigma[j] / max(sigma[y], self.eps)
                    comp = ratio_s ** self.q if ratio_s > 1.0 else 1.0
                    adjusted[j] += math.log(m * comp)
                s = softmax(adjusted)
                total += -math.log(s[y])
                for j in range(c):
                    grad[i][j] += (s[j] - (1.0 if j == y else 0.0)) / n
            obj_target = 0 if y < c else 1  # 0 = foreground, 1 = background
            s = softmax(z[i][c:])
            total += -math.log(s[obj_target])
            for j in range(2):
                grad[i][c + j] += (s[j] - (1.0 if j == obj_target else 0.0)) / n
        return total / n, grad  # avg_factor = all sampled RoIs, loss_weight 1

    def scores(self, z: list[list[float]]) -> list[list[float]]:
        """get_activation: softmax(classes) * p(fg), then p(bg) as the last column."""
        out = []
        for row in z:
            obj = softmax(row[self.c:])
            out.append([v * obj[0] for v in softmax(row[:self.c])] + [obj[1]])
        return out


def seesaw_to_release(logits: torch.Tensor, c: int) -> list[list[float]]:
    """Ours [obj bg, obj fg, class 1..C] -> the release's [class 0..C-1, obj fg, obj bg]."""
    return torch.cat([logits[:, 2:], logits[:, 1:2], logits[:, :1]], dim=1).tolist()


def seesaw_from_release(t: torch.Tensor, c: int) -> torch.Tensor:
    return torch.cat([t[:, c + 1:c + 2], t[:, c:c + 1], t[:, :c]], dim=1)


def seesaw_batch(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random release-layout batch whose first rows put the target below eps (clamp)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c + 2, generator=g, dtype=torch.float64) * 3.0
    # skewed labels so the counts differ by class (mitigation acts), 40 % background
    labels = torch.multinomial(torch.tensor([0.6] + [2.0 ** -k for k in range(c)]), n,
                               replacement=True, generator=g)
    labels[0], labels[1] = 1, c
    logits[0, 2] -= 12.0  # class 1's own probability far below eps = 0.01
    logits[1, c + 1] += 2.0
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seesaw_release_value_gradient_and_counts_over_steps(dtype):
    c = 7
    loss = build_loss("seesaw", num_classes=c)
    assert loss.layout == "release" and loss.num_outputs(c) == c + 2
    ref = SeesawReference(c)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    compensated = 0
    for step in range(4):
        logits, labels = seesaw_batch(48, c, seed=200 + step)
        value, grad = loss_and_grad(loss, logits.to(dtype), labels)
        rel_labels = [to_release_label(y, c) for y in labels.tolist()]
        ref_value, ref_grad = ref.step(seesaw_to_release(logits, c), rel_labels)
        ref_grad = seesaw_from_release(torch.tensor(ref_grad, dtype=torch.float64), c)
        assert value.dtype == dtype
        assert value.item() == pytest.approx(ref_value, rel=tol)
        assert torch.allclose(grad.double(), ref_grad, atol=tol, rtol=tol)
        # ours: entry 0 = background = the release's entry C
        assert loss.cum_samples.tolist() == [ref.cum[c]] + ref.cum[:c]
        m, comp = loss.factors(logits, labels)
        assert m.shape == (48, c) and bool((m < 1).any())
        compensated += int((comp > 1).sum())
    assert compensated > 0  # both factors were exercised


def test_seesaw_release_scores_and_background_probability():
    c = 5
    logits, _ = seesaw_batch(10, c, seed=3)
    ref = torch.tensor(SeesawReference(c).scores(seesaw_to_release(logits, c)),
                       dtype=torch.float64)
    scores = build_loss("seesaw", num_classes=c).scores(logits)
    assert scores.shape == (10, c)
    assert torch.allclose(scores, ref[:, :c], atol=1e-12)
    # class scores and the release's background score partition the probability mass
    assert torch.allclose(scores.sum(1) + ref[:, c], torch.ones(10, dtype=torch.float64))
    single = build_loss("seesaw", num_classes=c, layout="single_softmax")
    z = logits[:, 1:]  # a (C + 1)-wide batch
    assert torch.allclose(single.scores(z), torch.softmax(z, 1)[:, 1:], atol=1e-12)


def test_seesaw_release_classifier_starts_from_stage1():
    c = 4
    torch.manual_seed(0)
    stage1 = torch.nn.Linear(8, c + 1)
    loss = build_loss("seesaw", num_classes=c)
    layer = torch.nn.Linear(8, loss.num_outputs(c))
    loss.init_classifier(layer, stage1)
    assert torch.equal(layer.weight[0], stage1.weight[0])  # objectness bg <- stage-1 bg
    assert torch.equal(layer.weight[2:], stage1.weight[1:])  # class l <- stage-1 label l
    assert torch.equal(layer.bias[2:], stage1.bias[1:]) and layer.bias[1].item() == 0.0
    assert 0 < layer.weight[1].abs().max().item() < 0.1  # fg objectness: small, new
    single = build_loss("seesaw", num_classes=c, layout="single_softmax")
    layer = torch.nn.Linear(8, single.num_outputs(c))
    single.init_classifier(layer, stage1)
    assert torch.equal(layer.weight, stage1.weight) and torch.equal(layer.bias, stage1.bias)


def test_new_options_are_one_line_config_errors_and_yaml_defaults_are_the_release():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "loss"
    assert OmegaConf.load(conf / "seesaw.yaml").layout == "release"
    assert OmegaConf.load(conf / "eqlv2.yaml").bg_factor is True
    assert build_loss("eqlv2", num_classes=2).bg_factor is True
    for name, params, needle in [("seesaw", {"layout": "split"}, "layout"),
                                 ("eqlv2", {"bg_factor": "yes"}, "bg_factor")]:
        with pytest.raises(ConfigError, match=needle) as err:
            build_loss(name, num_classes=3, **params)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- every loss


def _empty_batch_cases() -> list[tuple[str, dict]]:
    return [(name, {}) for name in available_losses()] + [
        ("seesaw", {"layout": "single_softmax"}), ("eqlv2", {"bg_factor": False})]


@pytest.mark.parametrize(("name", "extra"), _empty_batch_cases())
def test_every_loss_returns_zero_with_zero_gradient_on_an_empty_batch(name, extra):
    from acsl_cli.config import load_settings
    from acsl_cli.pipeline.components import make_loss
    from acsl_cli.settings import LossSettings

    counts = (1, 5, 50, 200, 3, 30)
    context = LossContext(6, frequencies=tuple("rcfrcf"), image_counts=counts,
                          instance_counts=counts, num_images=300)
    node = load_settings([f"loss={name}"]).loss  # the yaml's defaults
    loss = make_loss(LossSettings(node.name, {**node.params, **extra}), context)
    layer = torch.nn.Linear(4, loss.num_outputs(6))
    for training in (True, False):
        loss.train(training)
        layer.zero_grad()
        value = loss(layer(torch.zeros(0, 4)), torch.zeros(0, dtype=torch.long))
        value.backward()
        assert value.item() == 0.0, (name, training)
        assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
        assert torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))


# --------------------------------------------------------------------------- pipeline


SMOKE = ["schedule=smoke", "progress=false"]  # the default benchmark, 60 classes


def _defined(metrics: dict) -> dict:
    """Metrics with undefined values as None (metrics.json writes NaN as null)."""
    return {k: None if v is None or math.isnan(v) else v for k, v in metrics.items()}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """``acsl train schedule=smoke loss=seesaw,eqlv2``, then seesaw single_softmax on the
    same (cached) stage 1."""
    from acsl_cli.pipeline.train import run_train

    root = tmp_path_factory.mktemp("o")
    both = run_train([*SMOKE, f"output_root={root}", "loss=seesaw,eqlv2"])
    single = run_train([*SMOKE, f"output_root={root}", "loss=seesaw",
                        "loss.layout=single_softmax"])
    assert single.stage1_reused
    return both, single


@pytest.mark.parametrize(("run", "head", "width"), [(0, "seesaw", 60 + 2), (0, "eqlv2", 60 + 1),
                                                     (1, "seesaw", 60 + 1)])
def test_smoke_run_heads_evaluate_from_their_checkpoints(smoke_runs, run, head, width):
    from acsl_cli.engine.checkpoint import load_checkpoint
    from acsl_cli.pipeline.evaluate import run_eval_checkpoint
    from acsl_cli.plan import plan_eval

    res = smoke_runs[run]
    ckpt = res.run_dir / "heads" / head / "checkpoint.pt"
    assert load_checkpoint(ckpt)["classifier"]["weight"].shape[0] == width
    metrics = json.loads((res.run_dir / "metrics.json").read_text())[head]
    if (run, head) == (0, "seesaw"):  # after 6 iterations, but some detection is right
        assert any(metrics.values())
    again = run_eval_checkpoint(plan_eval([f"ckpt={ckpt}", "progress=false"]))
    assert _defined(again) == _defined(metrics)
