"""A sweep run again reuses its finished runs even when an option with a null default was
added to the config after they were saved (their config.yaml lacks the key)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from acsl_cli.errors import ConfigError
from acsl_cli.pipeline.reuse import differences, finished_run
from acsl_cli.plan import plan_sweep


def _saved_run(folder, plan, drop_key: bool, value=None):
    cfg = plan.settings.as_dict()
    if drop_key:
        del cfg["schedule"]["stage2"]["rois_per_image"]  # saved before the option existed
    else:
        cfg["schedule"]["stage2"]["rois_per_image"] = value
    cfg["heads"] = {h.id: {"label": h.label,
                           "loss": h.loss.as_dict()}
                    for h in plan.heads}
    folder.mkdir()
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (folder / "metrics.json").write_text(json.dumps({"bce": {"AP": 0.5, "APl": None}}))
    return folder


def test_a_run_saved_before_a_null_default_option_is_reused(tmp_path):
    (plan,) = plan_sweep(["seed=0", "loss=bce"]).runs
    assert plan.settings.schedule.stage2.rois_per_image is None
    result = finished_run(_saved_run(tmp_path / "old", plan, drop_key=True), plan)
    assert result is not None and result.metrics["bce"]["AP"] == 0.5


def test_a_run_saved_with_another_value_is_refused(tmp_path):
    (plan,) = plan_sweep(["seed=0", "loss=bce"]).runs
    with pytest.raises(ConfigError, match="other settings"):
        finished_run(_saved_run(tmp_path / "other", plan, drop_key=False, value=512), plan)


def test_sweep_mean_treats_undefined_metrics_as_undefined():
    """Open Images rows carry None for the COCO-only keys; LVIS rows nan for APl."""
    import math

    from acsl_cli.pipeline.sweep import mean_std

    runs = [{"m": {"AP": 0.5, "AP75": None, "APl": math.nan}},
            {"m": {"AP": 0.7, "AP75": None, "APl": math.nan}}]
    mean, std = mean_std(runs)
    assert mean["m"]["AP"] == pytest.approx(0.6) and std["m"]["AP"] == pytest.approx(0.141421356)
    assert math.isnan(mean["m"]["AP75"]) and math.isnan(std["m"]["AP75"])
    assert math.isnan(mean["m"]["APl"])


def test_a_run_of_another_detector_is_refused_and_the_message_names_it(tmp_path):
    (cascade,) = plan_sweep(["seed=0", "loss=bce", "detector=cascade_rcnn"]).runs
    (faster,) = plan_sweep(["seed=0", "loss=bce"]).runs
    folder = _saved_run(tmp_path / "faster", faster, drop_key=False)
    assert finished_run(folder, faster) is not None
    with pytest.raises(ConfigError, match="detector.name: 'faster_rcnn' there, "
                                          "'cascade_rcnn' here"):
        finished_run(folder, cascade)


def test_runs_are_pooled_only_with_runs_that_differ_in_the_seed():
    """``detector=a,b seed=0,1``: a mean over both detectors would describe neither."""
    from acsl_cli.pipeline.sweep import pooled_by_variant

    plan = plan_sweep(["seed=0,1", "detector=faster_rcnn,cascade_rcnn", "loss=bce"])
    assert plan.settings == ("seed=0 detector=faster_rcnn", "seed=0 detector=cascade_rcnn",
                             "seed=1 detector=faster_rcnn", "seed=1 detector=cascade_rcnn")
    assert plan.variants == ("detector.name=faster_rcnn", "detector.name=cascade_rcnn") * 2
    runs = [{"bce": {"AP": ap}} for ap in (0.1, 0.5, 0.3, 0.9)]
    mean, std, pooled = pooled_by_variant(plan.variants, runs)
    assert pooled == 2
    faster, cascade = "bce [detector.name=faster_rcnn]", "bce [detector.name=cascade_rcnn]"
    assert list(mean) == [faster, cascade]
    assert mean[faster]["AP"] == pytest.approx(0.2)
    assert mean[cascade]["AP"] == pytest.approx(0.7)
    assert std[cascade]["AP"] == pytest.approx(0.4 / 2 ** 0.5)
    seeds_only = plan_sweep(["seed=0,1", "loss=bce"])
    assert seeds_only.variants == ("", "")
    mean, _, pooled = pooled_by_variant(seeds_only.variants, runs[:2])
    assert list(mean) == ["bce"] and pooled == 2 and mean["bce"]["AP"] == pytest.approx(0.3)


def test_a_run_that_scored_fewer_protocols_is_refused(tmp_path):
    """``test.protocol`` does not split pooling variants, but a finished run without the
    fixed rows cannot stand in for one that asks for them."""
    (standard,) = plan_sweep(["seed=0", "loss=bce"]).runs
    (both,) = plan_sweep(["seed=0", "loss=bce", "test.protocol=[standard,fixed]"]).runs
    folder = _saved_run(tmp_path / "std", standard, drop_key=False)
    with pytest.raises(ConfigError, match="test.protocol"):
        finished_run(folder, both)
    assert finished_run(folder, standard) is not None


def test_a_run_made_with_other_head_losses_is_refused_by_a_sweep(tmp_path):
    """Rule: a finished run stands in for a planned one only with the same heads (their
    losses): its rows are per head. The message names the heads on both sides."""
    (bce,) = plan_sweep(["seed=0", "loss=bce"]).runs
    (acsl,) = plan_sweep(["seed=0", "loss=acsl"]).runs
    folder = _saved_run(tmp_path / "bce", bce, drop_key=False)
    with pytest.raises(ConfigError, match="heads: bce there, acsl xi=0.7 bg=official here"):
        finished_run(folder, acsl)
    (bce_too,) = plan_sweep(["seed=0", "loss=bce,acsl"]).runs  # a head more is not the same
    with pytest.raises(ConfigError, match="heads: bce there, "):
        finished_run(folder, bce_too)
    assert finished_run(folder, bce) is not None


@pytest.mark.parametrize("other, named", [
    (["dataset=synthetic_lvis"], ("dataset.kind", "synthetic", "synthetic_lvis")),
    (["dataset.num_classes=9"], ("dataset.num_classes", 60, 9)),
])
def test_a_run_made_on_another_dataset_is_refused_by_a_sweep(tmp_path, other, named):
    """Rule: the dataset (its kind, and a kind's own keys both configs hold) is an outcome
    setting: a run on another set is never reused, and what differs is named."""
    (here,) = plan_sweep(["seed=0", "loss=bce"]).runs
    (there,) = plan_sweep(["seed=0", "loss=bce", *other]).runs
    folder = _saved_run(tmp_path / "run", here, drop_key=False)
    with pytest.raises(ConfigError, match="exists but was made with other settings"
                                          r" \(dataset\."):
        finished_run(folder, there)
    saved = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    assert named in [(d.key, d.there, d.here) for d in differences(saved, there)]


def test_a_taken_sweep_name_is_judged_by_the_reuse_rule(tmp_path):
    """The sweep-name check says "complete already" exactly when every saved run would be
    reused, else names what differs by the same rule (heads by their losses first)."""
    from acsl_cli.pipeline.sweep_name import taken_message

    bce, acsl = plan_sweep(["seed=0", "loss=bce"]), plan_sweep(["seed=0", "loss=acsl"])
    summary = tmp_path / "S-sweep"
    summary.mkdir()
    (summary / "runs.txt").write_text("".join(f"{s}\t../S-sweep-{i}\n"
                                              for i, s in enumerate(bce.settings)))
    runs = [_saved_run(tmp_path / "S-sweep-0", bce.runs[0], drop_key=False)]
    assert "this sweep is complete already" in taken_message("S", summary, bce, runs)
    assert finished_run(runs[0], bce.runs[0]) is not None
    other = taken_message("S", summary, acsl, runs)
    assert "holds another sweep (heads: bce -> acsl xi=0.7 bg=official)" in other
    with pytest.raises(ConfigError, match="heads: bce there"):
        finished_run(runs[0], acsl.runs[0])
