"""Rules that tie several settings together; each value's own rule is declared with its
field (``acsl_cli.settings``). Each failure is one ``ConfigError`` line naming the keys.
"""

from __future__ import annotations

from acsl_cli.errors import ConfigError
from acsl_cli.settings import CascadeRCNNSettings, LocalLauncherSettings, Settings


def validate(s: Settings) -> None:
    """Check what no single field can: orderings, and what a stage may be."""
    # stage 1 may have 0 epochs (the detector, e.g. from init=, is used as it is); stage 2 not
    if s.schedule.stage2.epochs < 1:
        raise ConfigError(f"schedule.stage2.epochs={s.schedule.stage2.epochs}: must be an "
                          "integer >= 1")
    if s.sampler.name == "rfs" and s.sampler.t is None:
        raise ConfigError("sampler.t=None: rfs needs a frequency threshold in (0, 1]")
    if s.sampler.name != "rfs" and s.sampler.t is not None:  # read by nothing, yet keyed
        raise ConfigError(f"sampler.t: a setting of sampler=rfs, not of "
                          f"sampler={s.sampler.name}")
    _check_detector(s)
    _check_launcher(s)
    _check_calibration(s)
    d = s.dataset
    if s.test.backend == "lvis-api":
        if s.test.protocols != ("standard",):
            raise ConfigError(f"test.backend=lvis-api, test.protocol={s.test.protocol}: "
                              "lvis-api has the standard protocol only (Fixed and Pooled "
                              "AP's reference scripts are not in it); use test.backend=ours")
        if d.kind in ("openimages", "openimages_synthetic"):
            raise ConfigError(f"test.backend=lvis-api: dataset {d.name} is scored with the "
                              "Open Images metric, not LVIS rules")
    if s.test.protocols != ("standard",) and d.kind in ("openimages", "openimages_synthetic"):
        raise ConfigError(f"test.protocol={s.test.protocol}: fixed and pooled are LVIS "
                          f"protocols; dataset {d.name} is scored with the Open Images metric")
    d.check_together()  # the rules across the dataset kind's own fields


def _check_launcher(s: Settings) -> None:
    """A local job's GPUs need a device that uses them (a key of another launcher is
    refused by the launcher's own section: ``settings.build``)."""
    if isinstance(s.launcher, LocalLauncherSettings) and s.launcher.gpus_per_run and \
            s.device == "cpu":
        raise ConfigError(f"launcher.gpus_per_run={s.launcher.gpus_per_run} with device=cpu: "
                          "the jobs would not use their GPUs (use device=auto or cuda)")


def _check_detector(s: Settings) -> None:
    """A cascade's per-stage lists have one entry per stage; a box coder has 4 weights."""
    det = s.detector
    if not isinstance(det, CascadeRCNNSettings):
        return
    n = len(det.iou_thresholds)
    if len(det.stage_weights) != n or len(det.box_coder_weights) != n:
        raise ConfigError(f"detector.iou_thresholds, stage_weights, box_coder_weights: need one "
                          f"entry per stage each, got {n}, {len(det.stage_weights)}, "
                          f"{len(det.box_coder_weights)}")
    for i, w in enumerate(det.box_coder_weights):
        if len(w) != 4:
            raise ConfigError(f"detector.box_coder_weights[{i}]={list(w)}: need 4 weights "
                              "(x, y, w, h)")


#: dataset kinds that can generate held-out images from their train distribution
HELDOUT_KINDS = ("synthetic", "synthetic_lvis")


def _check_calibration(s: Settings) -> None:
    """Several gammas are picked from on held-out images, which only a generated set has."""
    c = s.test.calibration
    if c.method == "none":
        return
    if len(set(map(float, c.gamma))) != len(c.gamma):
        raise ConfigError(f"test.calibration.gamma={list(c.gamma)}: the values must differ")
    if c.select == "heldout" and len(c.gamma) > 1 and s.dataset.kind not in HELDOUT_KINDS:
        raise ConfigError(
            f"test.calibration.select=heldout: dataset kind '{s.dataset.kind}' has no images "
            "held out from train to pick gamma on; give one gamma, or "
            "test.calibration.select=none (every gamma reported on val, none picked)")
