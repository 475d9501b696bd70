"""The learning rate is torch's ``LambdaLR`` (engine/schedule.py) and equals, bit for bit,
the closed form the project used before it (linear warm-up, x0.1 steps at fractions of
the stage), also across resumes, from new resume files (scheduler state saved) and old
ones (none)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from acsl_cli.engine.checkpoint import load_state_file, save_state_file
from acsl_cli.engine.loop import fit
from acsl_cli.engine.schedule import StageSchedule


def closed_form(it: int, total: int, base: float, warmup_iters: int, ratio: float,
                steps: list[float]) -> float:
    """The formula written out, in the order the old ``learning_rate`` computed it."""
    lr = base * 0.1 ** sum(it >= int(round(s * total)) for s in steps)
    if it < warmup_iters:
        lr *= ratio + (1 - ratio) * it / warmup_iters
    return lr


def schedule(lr=0.02, warmup_iters=10, warmup_ratio=0.1, steps=(0.5, 0.75), epochs=1):
    return StageSchedule(epochs=epochs, lr=lr, momentum=0.9, weight_decay=1e-4,
                         warmup_iters=warmup_iters, warmup_ratio=warmup_ratio,
                         steps=list(steps), grad_clip=35.0)


def optimizer(lr: float) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


#: (base lr, warm-up iterations, warm-up ratio, steps, total): the recipes of conf/schedule
#: (1x, default, smoke) and others, none with a step inside the warm-up
RECIPES = [
    (0.02, 500, 0.001, [0.667, 0.889], 3000),  # 1x's recipe over a shorter stage
    (0.02, 100, 0.001, [0.75], 1000),
    (0.02, 50, 0.001, [0.75], 600),
    (0.02, 2, 0.001, [0.75], 6),
    (0.01, 10, 0.1, [0.5, 0.75], 100),
    (0.005, 0, 1.0, [], 40),
    (0.1, 7, 0.5, [0.3, 0.3, 0.9], 50),  # a repeated step: x0.01 at once
]


def lrs(sched: StageSchedule, total: int) -> list[float]:
    """The optimizer's lr at each iteration, as the scheduler sets it (no training: torch's
    warning about a scheduler step before an optimizer step is expected here)."""
    opt = optimizer(sched.lr)
    s = sched.scheduler(opt, total)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(total):
            assert s.get_last_lr()[0] == opt.param_groups[0]["lr"]
            out.append(opt.param_groups[0]["lr"])
            s.step()
    return out


@pytest.mark.parametrize("base,warmup,ratio,steps,total", RECIPES)
def test_lr_at_every_iteration_is_the_closed_form_bit_for_bit(base, warmup, ratio, steps,
                                                              total):
    want = [closed_form(it, total, base, warmup, ratio, steps) for it in range(total)]
    assert lrs(schedule(base, warmup, ratio, steps), total) == want


def test_a_step_inside_the_warmup_differs_at_most_in_the_last_bit():
    """Documented in engine/schedule.py: ``base * (gamma^n * w)`` against
    ``(base * gamma^n) * w`` where both factors are below 1."""
    base, warmup, ratio, total = 0.02, 30, 0.001, 100
    got = lrs(schedule(base, warmup, ratio, [0.1, 0.5]), total)
    for it in range(total):
        want = closed_form(it, total, base, warmup, ratio, [0.1, 0.5])
        assert got[it] == pytest.approx(want, rel=4e-16, abs=0), it
        if it < 10 or it >= warmup:  # one factor is 1: exact
            assert got[it] == want, it


def test_the_first_iterations_by_hand():
    got = lrs(schedule(), 100)
    assert got == [closed_form(it, 100, 0.02, 10, 0.1, [0.5, 0.75]) for it in range(100)]
    assert got[0] == pytest.approx(0.002) and got[5] == pytest.approx(0.02 * 0.55)
    assert got[10] == got[49] == 0.02
    assert got[50] == pytest.approx(0.002) and got[75] == pytest.approx(0.0002)


# -- through fit, with resume files ------------------------------------------------------

class Stop(Exception):
    pass


class TinyStep:
    """One SGD parameter; records the lr its optimizer used at each iteration."""

    stage = "stage 1"

    def __init__(self, sched: StageSchedule) -> None:
        self.w = torch.nn.Parameter(torch.ones(3))
        self.opt = torch.optim.SGD([self.w], lr=sched.lr, momentum=sched.momentum)
        self.optimizers = [self.opt]
        self.used: list[float] = []

    def __call__(self, images, targets, it, guard):
        self.used.append(self.opt.param_groups[0]["lr"])
        loss = ((self.w * images[0]) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def state_dict(self):
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])


def loader() -> DataLoader:
    items = [(torch.full((3,), 0.1 * (i + 1)), {"i": torch.tensor(i)}) for i in range(4)]
    return DataLoader(items, batch_size=1,
                      collate_fn=lambda b: ([x for x, _ in b], [t for _, t in b]))


SCHED = schedule(lr=0.02, warmup_iters=5, warmup_ratio=0.1, steps=[0.5, 0.75], epochs=4)
TOTAL = 16  # 4 epochs of 4: warm-up over iterations 0-4, steps at 8 and 12
WANT = [closed_form(it, TOTAL, 0.02, 5, 0.1, [0.5, 0.75]) for it in range(TOTAL)]


def run(resume=None, stop_after=None) -> tuple[TinyStep, list[dict]]:
    def after_epoch(n: int) -> None:
        if n == stop_after:
            raise Stop

    step = TinyStep(SCHED)
    try:
        history = fit(step, loader(), SCHED, "cpu", show_progress=False, resume=resume,
                      after_epoch=after_epoch)
    except Stop:
        history = []
    return step, history


def as_old_resume_file(path) -> None:
    """What the code before the schedulers wrote: no scheduler state, and the optimizer's
    lr the last iteration's (the step set it), without torch's ``initial_lr``."""
    state = load_state_file(path)
    del state["schedulers"]
    for g in state["step"]["opt"]["param_groups"]:
        del g["initial_lr"]
        g["lr"] = WANT[state["iter"] - 1]
    save_state_file(path, state)


def test_fit_uses_the_closed_form_and_saves_the_scheduler_state(tmp_path):
    step, history = run()
    assert step.used == WANT and [h["lr"] for h in history] == WANT
    resume = tmp_path / "r.pt"
    run(resume, stop_after=1)
    state = load_state_file(resume)
    assert state["iter"] == 4 and state["schedulers"][0]["last_epoch"] == 4
    assert state["schedulers"][0]["_last_lr"] == [WANT[4]]


@pytest.mark.parametrize("old", [False, True], ids=["new_file", "old_file"])
@pytest.mark.parametrize("stop_after", [1, 2, 3], ids=["mid_warmup", "after_warmup",
                                                       "mid_step"])
def test_resume_continues_the_same_lr_sequence(tmp_path, stop_after, old):
    resume = tmp_path / "r.pt"
    first, _ = run(resume, stop_after)
    assert first.used == WANT[:4 * stop_after]
    if old:
        as_old_resume_file(resume)
    second, history = run(resume)
    assert second.used == WANT[4 * stop_after:]
    assert [h["lr"] for h in history] == WANT
    straight, _ = run()
    assert torch.equal(second.w, straight.w)


def test_a_resume_file_with_foreign_scheduler_state_is_one_line(tmp_path):
    from acsl_cli.errors import DataError

    resume = tmp_path / "r.pt"
    run(resume, stop_after=1)
    state = load_state_file(resume)
    state["schedulers"][0]["last_epoch"] = 9
    save_state_file(resume, state)
    with pytest.raises(DataError, match="lr schedulers"):
        run(resume)
    assert not resume.exists()
