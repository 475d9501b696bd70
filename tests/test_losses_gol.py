"""GOL (Gumbel Optimised Loss) against the release's equations, written here in plain torch.

The reference follows kostas1515/GOL ``DropLoss`` (``use_classif='gumbel'``) and
``GumbelCE`` in their own layout (C logits, mmdetection's background label C; GumbelCE has a
background column last), elementwise with autograd; only the uniform draws are shared with
the loss under test, by replaying its documented generator protocol.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from acsl_cli.errors import ConfigError
from acsl_cli.losses import LossContext, build_loss, detection_loss


def long_tail(c: int, seed: int = 0) -> tuple[list[int], int]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.exp(torch.rand(c, generator=g, dtype=torch.float64) * math.log(2000.0))
    return [int(x) for x in counts.round()], 100_000


def batch(n: int, c: int, dtype: torch.dtype, seed: int = 0, fg: float = 0.3):
    """Logits spread over the clamp (about -14 .. 14) and labels, ``fg`` foreground."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, c + 1, generator=g, dtype=torch.float64) * 5.0).to(dtype)
    labels = torch.randint(1, c + 1, (n,), generator=g)
    labels[torch.rand(n, generator=g) >= fg] = 0
    return z, labels


def release_gumbel(x: torch.Tensor) -> torch.Tensor:
    return 1 / (torch.exp(torch.exp(-x)))


def release_droploss(z: torch.Tensor, labels: torch.Tensor, freq: torch.Tensor, lam: float,
                     rand: torch.Tensor) -> torch.Tensor:
    """DropLoss.forward with use_classif='gumbel': z (N, C), labels 0..C (C = background),
    ``rand`` the (N, C) matrix torch.rand_like would have drawn."""
    n_i, n_c = z.shape
    target = z.new_zeros(n_i, n_c + 1)
    target[torch.arange(n_i), labels] = 1
    target = target[:, :n_c]
    weight = z.new_zeros(n_c)
    weight[freq < lam] = 1
    weight = weight.view(1, n_c).expand(n_i, n_c)
    fg = labels != n_c
    ratio = torch.mean((freq[labels[fg]] < lam).float())
    fgw = fg.float().view(n_i, 1).expand(n_i, n_c)
    bg = 1 - fgw
    random = rand * bg
    random = torch.where(random > ratio, torch.ones_like(random), torch.zeros_like(random))
    weight = (random + fgw) * weight
    drop_w = 1 - weight * (1 - target)
    p = release_gumbel(torch.clamp(z, min=-4, max=10))
    return torch.sum(F.binary_cross_entropy(p, target, reduction="none") * drop_w) / n_i


def release_gumbel_ce(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GumbelCE: (N, C + 1) logits, background last, mean over N, loss clamped to [0, 20]."""
    target = F.one_hot(labels, z.shape[1]).to(z.dtype)
    p = release_gumbel(torch.clamp(z, min=-4, max=10))
    loss = F.binary_cross_entropy(p, target, reduction="none").sum() / z.shape[0]
    return torch.clamp(loss, min=0, max=20)


def to_release(z: torch.Tensor, labels: torch.Tensor, c: int, background_last: bool = False):
    """Our layout (column 0 and label 0 = background) in the release's."""
    mm = torch.where(labels == 0, c, labels - 1)
    return (torch.cat([z[:, 1:], z[:, :1]], 1) if background_last else z[:, 1:]), mm


def replay_draws(gen: torch.Generator, labels: torch.Tensor, tail_cols: torch.Tensor,
                 c: int, lam_ratio_fill: float = 0.5) -> torch.Tensor:
    """The (N, C) uniform matrix as the release sees it: our CPU protocol draws
    torch.rand(n_bg, T) per call; the entries it does not draw cannot matter (fill)."""
    bg_rows = (labels == 0).nonzero().squeeze(1)
    drawn = torch.rand(bg_rows.numel(), tail_cols.numel(), generator=gen)
    full = torch.full((labels.shape[0], c), lam_ratio_fill)
    full[bg_rows[:, None], tail_cols[None, :]] = drawn
    return full


def freq_and_tail(counts, num_images, lam):
    freq = torch.FloatTensor([x / num_images for x in counts])  # the release: float32
    return freq, (freq < lam).nonzero().squeeze(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [5, 50, 1203])
def test_gol_equals_release_droploss_over_several_calls(c, dtype):
    counts, num_images = long_tail(c)
    lam = 0.0011
    loss = build_loss("gol", LossContext(c, seed=7, image_counts=tuple(counts),
                                         num_images=num_images), lambda_=lam)
    freq, tail = freq_and_tail(counts, num_images, lam)
    assert 0 < tail.numel() < c
    gen = torch.Generator().manual_seed(7)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 1e-5, "atol": 1e-6}
    for it in range(3):  # the draws advance call by call
        z, labels = batch(64, c, dtype, seed=it)
        labels[0] = int(tail[0]) + 1  # at least one tail foreground RoI: 0 < r < 1
        labels[1] = 0
        z[2, labels[2]] = -3.6  # a positive under BCE's 1e-12 floor
        ours = z.clone().requires_grad_()
        value = loss(ours, labels)
        value.backward()
        ref_z = z.clone().requires_grad_()
        zr, mm = to_release(ref_z, labels, c)
        ref = release_droploss(zr, mm, freq, lam, replay_draws(gen, labels, tail, c))
        ref.backward()
        assert value.dtype == dtype
        torch.testing.assert_close(value, ref, **tol)
        torch.testing.assert_close(ours.grad, ref_z.grad, **tol)
        assert torch.equal(ours.grad[:, 0], torch.zeros(64, dtype=dtype))  # no bg logit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gol_on_bench_like_batches_equals_the_release_call_after_call(dtype):
    """The benchmark's shape of batch (logits N(-4, 2), a quarter foreground, C = 1203),
    one loss over calls with r strictly inside (0, 1), r = 1 (every foreground RoI a tail
    class), r = 0 (none) and r = NaN (no foreground); the 0/1 float weights the forward
    uses are the bool ``weights`` for the same draws."""
    c, n, lam = 1203, 256, 0.0011
    counts, num_images = long_tail(c, seed=2)
    loss = build_loss("gol", num_classes=c, image_counts=counts, num_images=num_images,
                      lambda_=lam, seed=11)
    freq, tail = freq_and_tail(counts, num_images, lam)
    head = (freq >= lam).nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(11)
    # float64: torch's BCE gradient floors p (1 - p) at 1e-12 rounded to float32 (1 - 4e-9
    # of it), ours at 1e-12: gradients under the floor (z in [-4, -3.3]) differ by 4e-9
    tol = {"rtol": 1e-8, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 1e-5, "atol": 1e-6}
    for it, kind in enumerate(("mixed", "all tail", "no tail", "no foreground")):
        g = torch.Generator().manual_seed(100 + it)
        z = (torch.randn(n, c + 1, generator=g, dtype=torch.float64) * 2.0 - 4.0).to(dtype)
        fg = torch.rand(n, generator=g) < 0.25
        pool = {"mixed": torch.arange(c), "all tail": tail, "no tail": head}.get(kind)
        labels = torch.zeros(n, dtype=torch.long)
        if pool is not None:
            labels[fg] = pool[torch.randint(0, pool.numel(), (n,), generator=g)][fg] + 1
        state = loss.generator.get_state()
        bool_w = loss.weights(labels)
        loss.generator.set_state(state)
        float_w = loss.weights(labels, dtype)
        assert bool_w.dtype == torch.bool and float_w.dtype == dtype
        assert torch.equal(float_w, bool_w.to(dtype))
        loss.generator.set_state(state)
        ours = z.clone().requires_grad_()
        value = loss(ours, labels)
        value.backward()
        ref_z = z.clone().requires_grad_()
        zr, mm = to_release(ref_z, labels, c)
        ref = release_droploss(zr, mm, freq, lam, replay_draws(gen, labels, tail, c))
        ref.backward()
        assert value.dtype == dtype and torch.isfinite(value)
        torch.testing.assert_close(value, ref, **tol)
        torch.testing.assert_close(ours.grad, ref_z.grad, **tol)


def test_two_forwards_then_one_backward_and_a_second_backward_refused():
    """Each forward keeps its own gradient (the loss reuses its temporaries, never the
    gradient): two calls summed give each call's own gradient. Backward scales the saved
    gradient in place, so a second backward through one forward fails loudly."""
    c = 50
    counts, num_images = long_tail(c)
    a, b = (build_loss("gol", num_classes=c, image_counts=counts, num_images=num_images,
                       lambda_=0.0011, seed=6) for _ in range(2))
    (z1, y1), (z2, y2) = batch(40, c, torch.float32, seed=1), batch(40, c, torch.float32, 2)
    s1, s2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    (a(s1, y1) + 3.0 * a(s2, y2)).backward()
    o1, o2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    b(o1, y1).backward()
    (3.0 * b(o2, y2)).backward()
    assert torch.equal(s1.grad, o1.grad) and torch.equal(s2.grad, o2.grad)
    value = b(z1.clone().requires_grad_(), y1)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        value.backward()


def test_gol_drop_draws_only_on_tail_columns_of_background_rows():
    """The fill of the undrawn entries cannot change the release's value."""
    c = 50
    counts, num_images = long_tail(c, seed=1)
    freq, tail = freq_and_tail(counts, num_images, 0.0011)
    z, labels = batch(40, c, torch.float64, seed=3)
    zr, mm = to_release(z, labels, c)
    values = []
    for fill in (0.0, 0.999):
        gen = torch.Generator().manual_seed(0)
        values.append(release_droploss(zr, mm, freq, 0.0011,
                                       replay_draws(gen, labels, tail, c, fill)))
    assert values[0].item() == values[1].item()


def test_without_foreground_nothing_is_dropped():
    """No foreground RoI: the release's ratio is NaN, ``rand > NaN`` is False: w = 1."""
    c = 6
    loss = build_loss("gol", num_classes=c, image_counts=[1, 1, 1, 500, 500, 500],
                      num_images=1000, lambda_=0.01)
    keep = loss.weights(torch.zeros(5, dtype=torch.long))
    assert keep[:, 1:].all() and not keep[:, 0].any()
    z = torch.zeros(5, c + 1, dtype=torch.float64)
    # every foreground column, target 0: -log(1 - 1/e) each; / N rows -> c per row
    expected = c * -math.log(1 - math.exp(-1.0))
    assert loss(z, torch.zeros(5, dtype=torch.long)).item() == pytest.approx(expected,
                                                                             rel=1e-14)


def test_weights_hand_case_and_drop_rate():
    """Foreground rows drop every tail column but their own; background rows drop a tail
    column with probability 1 - r, r = share of tail classes among the foreground RoIs."""
    counts = [1, 2, 500, 600]  # tail (f < 0.01 of 1000 images): classes 1 and 2
    loss = build_loss("gol", num_classes=4, image_counts=counts, num_images=1000,
                      lambda_=0.01, seed=1)
    labels = torch.tensor([1, 3, 3, 4] + [0] * 4000)  # r = 1 / 4
    keep = loss.weights(labels)
    assert keep[0].tolist() == [False, True, False, True, True]
    assert keep[1].tolist() == [False, False, False, True, True]
    bg = keep[4:]
    assert bg[:, 3:].all() and not bg[:, 0].any()
    assert bg[:, 1:3].float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_positive_gradient_under_the_bce_floor_by_hand():
    """z = -3.5 on the target: p = exp(-e^3.5) ~ 4e-15, p (1 - p) < 1e-12, so the gradient
    is (p - 1) p e^3.5 / 1e-12 (not -e^3.5 = -33); below -4 the clamp makes it 0."""
    loss = build_loss("gol", num_classes=2, image_counts=[500, 500], num_images=1000,
                      lambda_=0.01)
    z = torch.tensor([[0.0, -3.5, 20.0], [0.0, -5.0, 0.0]], dtype=torch.float64,
                     requires_grad=True)
    loss(z, torch.tensor([1, 1])).backward()
    u = math.exp(3.5)
    p = math.exp(-u)
    assert z.grad[0, 1].item() == pytest.approx((p - 1) * p * u / 1e-12 / 2, rel=1e-9)
    assert z.grad[0, 2].item() == 0.0 and z.grad[1, 1].item() == 0.0  # clamped


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [5, 50, 1203])
def test_gumbel_ce_variant_equals_release(c, dtype):
    counts, num_images = long_tail(c)
    loss = build_loss("gol", num_classes=c, image_counts=counts, num_images=num_images,
                      variant="gumbel_ce")
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 1e-5, "atol": 1e-6}
    for scale, capped in ((0.1, False), (40.0, True)):
        z, labels = batch(32, c, dtype, seed=5)
        z = z * scale
        if not capped:  # confident: negatives near -2 (+- 0.5), targets at +3
            z = z - 2.0
            z[torch.arange(32), labels] = 3.0
        ours, ref_z = z.clone().requires_grad_(), z.clone().requires_grad_()
        value = loss(ours, labels)
        value.backward()
        zr, mm = to_release(ref_z, labels, c, background_last=True)
        ref = release_gumbel_ce(zr, mm)
        ref.backward()
        assert (ref.item() == 20.0) == capped
        torch.testing.assert_close(value, ref, **tol)
        torch.testing.assert_close(ours.grad, ref_z.grad, **tol)
    with pytest.raises(ConfigError, match="per-RoI"):
        loss.roi_losses(z, labels)


def test_roi_losses_are_forward_per_roi_with_the_same_draws():
    c = 50
    counts, num_images = long_tail(c)
    a, b = (build_loss("gol", num_classes=c, image_counts=counts, num_images=num_images,
                       lambda_=0.0011, seed=4) for _ in range(2))
    z, labels = batch(48, c, torch.float64, seed=9)
    for _ in range(2):
        rows = b.roi_losses(z, labels)
        assert rows.shape == (48,)
        assert a(z, labels).item() == pytest.approx(rows.sum().item() / 48, rel=1e-12)


def test_empty_batch_is_zero_with_zero_gradient():
    for variant in ("gol", "gumbel_ce"):
        loss = build_loss("gol", num_classes=3, image_counts=[1, 2, 3], num_images=10,
                          variant=variant)
        z = torch.zeros(0, 4, requires_grad=True)
        value = loss(z, torch.zeros(0, dtype=torch.long))
        value.backward()
        assert value.item() == 0.0 and torch.equal(z.grad, torch.zeros(0, 4))


def test_scores_are_the_release_activation_by_hand():
    loss = build_loss("gol", num_classes=4, image_counts=[1, 2, 3, 4], num_images=10)
    z = torch.tensor([[50.0, 0.0, -math.log(math.log(2.0)), -100.0, 20.0]],
                     dtype=torch.float64)
    s = loss.scores(z)
    assert s.shape == (1, 4)  # the background column is dropped, no factor
    assert s[0, 0].item() == pytest.approx(math.exp(-1.0), rel=1e-15)
    assert s[0, 1].item() == pytest.approx(0.5, rel=1e-15)
    assert s[0, 2].item() == 0.0  # exp(e^100) overflows: 1 / inf
    assert s[0, 3].item() == pytest.approx(math.exp(-math.exp(-20.0)), rel=1e-15)  # unclamped
    half = loss.scores(z.to(torch.bfloat16))
    assert half.dtype == torch.float32


def test_init_release_and_stage1():
    stage1 = torch.nn.Linear(3, 5)
    for init in ("stage1", "release"):
        loss = build_loss("gol", num_classes=4, image_counts=[1, 2, 3, 4], num_images=10,
                          init=init)
        layer = torch.nn.Linear(3, loss.num_outputs(4))
        loss.init_classifier(layer, stage1)
        if init == "stage1":
            assert torch.equal(layer.weight, stage1.weight)
        else:
            assert (layer.weight == 0.001).all() and (layer.bias == -2.0).all()


@pytest.mark.parametrize(("params", "needle"), [
    ({"variant": "drop"}, "variant must be one of gol, gumbel_ce"),
    ({"init": "zeros"}, "init must be one of stage1, release"),
    ({"lambda_": -1}, "lambda_ must be a number >= 0"),
    ({"num_images": 0}, "num_images must be positive"),
])
def test_bad_parameters_are_one_line_config_errors(params, needle):
    kwargs = {"num_classes": 3, "image_counts": [1, 2, 3], "num_images": 10, **params}
    with pytest.raises(ConfigError, match=needle) as err:
        build_loss("gol", **kwargs)
    assert "\n" not in str(err.value)


def test_detection_loss_background_last_is_the_same_loss():
    stats = {"image_counts": (1, 5, 50, 200, 3, 30), "num_images": 300}
    first = detection_loss("gol", 6, background="first", seed=2, lambda_=0.1, **stats)
    last = detection_loss("gol", 6, background="last", seed=2, lambda_=0.1, **stats)
    z, labels = batch(30, 6, torch.float64, seed=1)
    zl, ml = to_release(z, labels, 6, background_last=True)
    assert first(z, labels).item() == pytest.approx(last(zl, ml).item(), rel=1e-12)
    assert torch.equal(first.scores(z), last.scores(zl))


@pytest.mark.cuda  # deselected by default; scripts/gpu_check.sh runs it on a GPU
def test_gol_on_cuda_is_sync_free_and_equals_the_release():
    c = 1203
    counts, num_images = long_tail(c)
    lam = 0.0011
    loss = build_loss("gol", num_classes=c, image_counts=counts, num_images=num_images,
                      lambda_=lam, seed=3).cuda()
    freq, tail = freq_and_tail(counts, num_images, lam)
    cpu_gen, dev_gen = torch.Generator().manual_seed(3), torch.Generator(device="cuda")
    z, labels = (t.cuda() for t in batch(512, c, torch.float32, seed=2))
    loss(z, labels)  # warm-up: lazy initialisation may sync
    dev_gen.manual_seed(int(torch.randint(0, 2**62, (), generator=cpu_gen)))
    torch.rand((512, tail.numel()), generator=dev_gen, device="cuda")
    ours = z.clone().requires_grad_()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            value = loss(ours, labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert not [w for w in caught if "synchroniz" in str(w.message)]
    value.backward()
    dev_gen.manual_seed(int(torch.randint(0, 2**62, (), generator=cpu_gen)))
    drawn = torch.rand((512, tail.numel()), generator=dev_gen, device="cuda")
    full = torch.full((512, c), 0.5, device="cuda")
    full[:, tail.cuda()] = drawn
    ref_z = z.clone().requires_grad_()
    zr, mm = to_release(ref_z, labels, c)
    ref = release_droploss(zr, mm, freq.cuda(), lam, full)
    ref.backward()
    torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.grad, ref_z.grad, rtol=1e-5, atol=1e-6)
