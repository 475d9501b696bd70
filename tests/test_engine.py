"""Schedules, the stage-1 cache key, and the shared-pass stage 2."""

from __future__ import annotations

import copy

import pytest
import torch

from acsl_cli import config as config_mod
from acsl_cli.engine.finetune_heads import finetune_heads, new_head
from acsl_cli.engine.loaders import train_loader
from acsl_cli.engine.schedule import StageSchedule
from acsl_cli.errors import ConfigError
from acsl_cli.models.classifier import NormedLinear
from acsl_cli.models.trunk import FrozenTrunk
from acsl_cli.pipeline.components import classifier_spec, loss_context, make_loss
from acsl_cli.plan import plan_train
from acsl_cli.settings import stage1_key
from tests.conftest import TINY  # noqa: E402 - re-exported: other tests import it from here


def test_stage1_key_ignores_stage2_settings(tmp_path):
    base = [f"output_root={tmp_path}"]
    key = stage1_key(config_mod.load_settings(base), 1)
    for same in (["loss=bce"], ["xi=0.3"], ["schedule.stage2.lr=0.5"], ["run_name=x"],
                 ["dataset.loss_defaults.eql_lambda=0.5"]):
        assert stage1_key(config_mod.load_settings(base + same), 1) == key, same
    for other in (["seed=1"], ["schedule.stage1.lr=0.01"], ["dataset.num_classes=30"],
                  ["backbone.fpn_channels=32"]):
        assert stage1_key(config_mod.load_settings(base + other), 1) != key, other


def test_expand_heads_products_only_where_they_apply():
    heads = plan_train(["loss=bce,acsl", "xi=0.3,0.7"]).heads
    assert [h.label for h in heads] == [
        "bce", "acsl xi=0.3 bg=official", "acsl xi=0.7 bg=official"]
    assert [h.id for h in heads] == ["bce", "acsl_xi0.3_bgofficial", "acsl_xi0.7_bgofficial"]
    with pytest.raises(ConfigError, match="sweep"):
        plan_train(["seed=0,1"])
    # a loss.* list makes heads too, named by what tells them apart
    heads = plan_train(["loss=acsl", "loss.bg_factor=true,false"]).heads
    assert [h.label for h in heads] == ["acsl xi=0.7 bg=official bg_factor=True",
                                        "acsl xi=0.7 bg=official bg_factor=False"]
    assert [h.loss.params["bg_factor"] for h in heads] == [True, False]


def _heads(cfg, data, model, names):
    heads = []
    for n in names:
        c = config_mod.load_settings(TINY + [f"loss={n}"])
        loss = make_loss(c.loss, loss_context(data, 0))
        heads.append(new_head(n, loss, model.roi_heads.box_predictor.cls_score,
                              data.cmap.num_classes, classifier_spec(c.loss)))
    return heads


def _finetune(cfg, data, model, heads):
    torch.manual_seed(123)
    loader = train_loader(data.train, 4, seed=5)
    sched = StageSchedule.from_settings(cfg.schedule.stage2)
    finetune_heads(FrozenTrunk(model), heads, loader, sched, "cpu", max_iters=3,
                   show_progress=False, amp="off")


def test_stage2_trains_only_the_heads_and_keeps_bn_statistics(tiny):
    cfg, data, model = tiny
    model = copy.deepcopy(model)
    model.train()  # as after stage 1: BatchNorm in train mode
    before = copy.deepcopy(model.state_dict())
    heads = _heads(cfg, data, model, ["bce"])
    w0 = heads[0].classifier.weight.detach().clone()
    _finetune(cfg, data, model, heads)
    after = model.state_dict()
    for k, v in before.items():  # weights and BN running stats alike
        assert torch.equal(v, after[k]), k
    assert not torch.equal(w0, heads[0].classifier.weight)
    assert len(heads[0].history) == 3


def test_heads_sharing_a_pass_train_exactly_as_alone(tiny):
    cfg, data, model = tiny
    together = _heads(cfg, data, copy.deepcopy(model), ["bce", "acsl", "softmax_ce"])
    _finetune(cfg, data, copy.deepcopy(model), together)
    for i, name in enumerate(["bce", "acsl", "softmax_ce"]):
        alone = _heads(cfg, data, copy.deepcopy(model), [name])
        _finetune(cfg, data, copy.deepcopy(model), alone)
        assert torch.allclose(alone[0].classifier.weight, together[i].classifier.weight,
                              atol=1e-6), name
        assert [h["loss"] for h in alone[0].history] == pytest.approx(
            [h["loss"] for h in together[i].history], rel=1e-5)


def test_interrupted_stage1_resumes_exactly(tiny, tmp_path):
    """Two epochs in one go == one epoch, stop, resume for the second."""
    from acsl_cli.data.transforms import RandomHorizontalFlip, Transformed
    from acsl_cli.engine.train_detector import train_detector

    cfg, data, model0 = tiny
    sched = StageSchedule(epochs=2, lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=0,
                          warmup_ratio=1.0, steps=[], grad_clip=35.0)

    def fresh(resume, epochs):
        torch.manual_seed(7)
        flip = RandomHorizontalFlip(0.5, seed=3)
        loader = train_loader(Transformed(data.train, flip), 4, seed=5)
        gens = [flip.generator, loader.sampler.generator]
        s = StageSchedule(**{**sched.__dict__, "epochs": epochs})
        return train_detector(model, loader, s, "cpu", None, False, resume, gens, amp="off")

    model = copy.deepcopy(model0)
    straight = fresh(None, 2)
    w_straight = copy.deepcopy(model.state_dict())

    resume = tmp_path / "stage1.resume.pt"
    model = copy.deepcopy(model0)
    first = fresh(resume, 1)
    assert resume.is_file() and len(first) == len(straight) // 2
    torch.manual_seed(999)  # the resumed process starts with other RNG state
    model = copy.deepcopy(model0)  # and with fresh weights: all must come from the file
    both = fresh(resume, 2)
    assert [h["loss"] for h in both] == pytest.approx([h["loss"] for h in straight], rel=1e-5)
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), w_straight[k].float(), atol=1e-5), k


@pytest.mark.parametrize("names", [["bce", "acsl"], ["eqlv2", "seesaw"], ["seesaw_normed"]])
def test_interrupted_stage2_resumes_exactly(tiny, tmp_path, names):
    """Two stage-2 epochs in one go == one epoch, stop, resume: heads, losses, loss state
    (a normalised classifier's weights too: its layer comes back from its settings)."""
    cfg, data, model0 = tiny
    sched = StageSchedule(epochs=2, lr=0.01, momentum=0.9, weight_decay=1e-4, warmup_iters=0,
                          warmup_ratio=1.0, steps=[], grad_clip=35.0)

    def fresh(resume, epochs):
        model = copy.deepcopy(model0)
        heads = _heads(cfg, data, model, names)
        torch.manual_seed(11)
        loader = train_loader(data.train, 4, seed=5)
        s = StageSchedule(**{**sched.__dict__, "epochs": epochs})
        finetune_heads(FrozenTrunk(model), heads, loader, s, "cpu", None, False, resume=resume,
                       amp="off")
        return heads

    straight = fresh(None, 2)
    resume = tmp_path / "stage2.resume.pt"
    first = fresh(resume, 1)
    assert resume.is_file() and len(first[0].history) == len(straight[0].history) // 2
    torch.manual_seed(999)
    both = fresh(resume, 2)
    for a, b in zip(straight, both, strict=True):
        assert isinstance(b.classifier, NormedLinear) == a.name.endswith("_normed")
        assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history],
                                                               rel=1e-6)
        assert torch.allclose(a.classifier.weight, b.classifier.weight, atol=1e-6)
        for k, v in a.loss.state_dict().items():
            assert torch.allclose(v.double(), b.loss.state_dict()[k].double()), k
