"""The typed settings of a run: every option declared once, with its default, its rule
and the cache keys it enters (see ``declare``).

Adding an option: one ``setting(...)`` line in the section it belongs to, and one line in
the yaml that documents it (``conf/``). Nothing else reads config keys. The backbone and
detector kinds are in ``settings.detection``, the launchers in ``settings.launchers``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from acsl_cli.errors import ConfigError, did_you_mean
from acsl_cli.settings.datasets import DatasetSettings, SyntheticDataset
from acsl_cli.settings.declare import STAGE1, STAGE2, kinds, section, setting
from acsl_cli.settings.detection import (
    BACKBONE_KINDS,
    DETECTOR_KINDS,
    BackboneSettings,
    DetectorSettings,
)
from acsl_cli.settings.launchers import LAUNCHER_KINDS, LauncherSettings
from acsl_cli.settings.rules import (
    Rule,
    boolean,
    choice,
    integer,
    list_of,
    number,
    one_or_list,
    text,
)

SEED_MAX = 2**31 - 1  # numpy and torch generators both take it; seed + 1 stays valid
AMP_MODES = ("off", "bf16", "fp16")


def _module_names() -> Rule:
    """``plugins=``: importable module names (``my_pkg.losses``), not paths."""
    import re

    ok = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*").fullmatch

    def check(key: str, v: Any) -> None:
        list_of(text())(key, v)
        for i, name in enumerate(v):
            if not ok(name):
                raise ConfigError(f"{key}[{i}]={name[:60]!r}: not a module name (a dotted "
                                  "name such as my_pkg.losses, importable from PYTHONPATH "
                                  "or the current folder)")

    return Rule(check, lambda v: ["json"] if list(v) != ["json"] else ["math"])


#: ``plugins=``: modules to import for their losses (``losses.plugins``); read by the config
#: reader before the overrides are checked, so the rule is named here
PLUGINS_RULE = _module_names()
#: LVIS evaluation protocols (evaluation.lvis_protocols)
PROTOCOLS = ("standard", "fixed", "pooled")


def yaml_text(data: Mapping[str, Any]) -> str:
    """Plain data as the YAML the config files use (a run's ``config.yaml``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dict(data)))


@dataclass(frozen=True)
class StageSettings:
    """One stage's optimisation recipe (``schedule.stage1`` / ``schedule.stage2``)."""

    epochs: int = setting(6, integer(0, 10_000))
    lr: float = setting(0.02, number(0, 1e6, lo_open=True))
    momentum: float = setting(0.9, number(0, 1, hi_open=True))
    weight_decay: float = setting(0.0001, number(0, 1))
    warmup_iters: int = setting(100, integer(0, 10**9))
    warmup_ratio: float = setting(0.001, number(0, 1, lo_open=True))
    steps: tuple[float, ...] = setting((0.75,), list_of(number(0, 1, lo_open=True,
                                                                hi_open=True)))
    grad_clip: float = setting(35.0, number(0, 1e12))


def _loss_name() -> Rule:
    """``schedule.stage1.loss``: a ``loss=NAME`` choice (a ``conf/loss`` preset, or a loss a
    plugin registers), named with the accepted ones when it is none."""

    def check(key: str, v: Any) -> None:
        from acsl_cli.conf_groups import available

        presets = available("loss")
        if isinstance(v, str) and v in presets:
            return
        names = presets
        if isinstance(v, str) and v:
            from acsl_cli.losses.registry import available_losses, loss_class

            try:
                loss_class(v)  # a plugin's loss (plugins=, entry points)
                return
            except ConfigError:
                names = sorted(set(presets) | set(available_losses()))
        shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
        raise ConfigError(f"{key}={shown}: not a loss ({did_you_mean(v, names)}choose from "
                          f"{', '.join(names)})")

    return Rule(check, lambda v: "bce" if v != "bce" else STAGE1_LOSS)


#: stage 1's loss unless ``schedule.stage1.loss`` says otherwise (the paper's decoupled
#: scheme: softmax cross-entropy end to end, then the heads' losses in stage 2)
STAGE1_LOSS = "softmax_ce"


@dataclass(frozen=True)
class Stage1Settings(StageSettings):
    """Stage 1's recipe: a stage's, and the loss the whole detector trains with."""

    #: a ``loss=NAME`` choice with its preset's defaults (resolved in ``Settings.
    #: stage1_loss``); added after the stage-1 key's format was fixed, so the default
    #: enters no key and existing entries keep theirs
    loss: str = setting(STAGE1_LOSS, _loss_name(), caches=(STAGE1,), changed_only=(STAGE1,))


@dataclass(frozen=True)
class Stage2Settings(StageSettings):
    """Stage 2's recipe: a stage's, and how many RoIs its frozen pass samples (stage 1's
    RoI sampler is the detector's own: ``backbone.roi_batch_size_per_image``)."""

    warmup_iters: int = setting(50, integer(0, 10**9))
    #: RoIs sampled per image (null = backbone.roi_batch_size_per_image)
    rois_per_image: int | None = setting(None, integer(1, 1_000_000, null=True))


@dataclass(frozen=True)
class ScheduleSettings:
    name: str = setting("default", text())
    batch_size: int = setting(8, integer(1, 100_000), caches=(STAGE1, STAGE2))
    #: data-loading processes: cannot change a result, so in no key (see ``keys.FIXED``)
    workers: int = setting(0, integer(0, 1024), caches=(), outcome=False)
    flip: float = setting(0.5, number(0, 1), caches=(STAGE1, STAGE2))
    max_iters: int | None = setting(None, integer(1, null=True), caches=(STAGE1, STAGE2))
    eval_max_images: int | None = setting(None, integer(1, null=True))
    #: a training line (time per iteration, ETA, memory, losses) every N iterations: into
    #: train.log and trackers, and to stderr when no progress bar is live there
    log_every: int = setting(50, integer(1, 10**9), caches=(), outcome=False)
    #: validate every N epochs of either stage (on eval_max_images), into the event log
    eval_every_epochs: int | None = setting(None, integer(1, null=True), caches=(),
                                            outcome=False)
    stage1: Stage1Settings = section(Stage1Settings, caches=(STAGE1, STAGE2))
    stage2: Stage2Settings = section(Stage2Settings)


@dataclass(frozen=True)
class SamplerSettings:
    """How stage 1 and stage 2 draw train images."""

    name: str = setting("random", choice("random", "rfs", "class_aware"))
    #: RFS frequency threshold: a fraction of the train images
    t: float | None = setting(None, number(0, 1, lo_open=True, null=True))


#: ``KEY=VALUE`` spellings that set a section's leading field: ``test.calibration=norcal``
#: means ``test.calibration.method=norcal`` (read by ``config.parse_overrides``)
SHORTHANDS = {"test.calibration": "test.calibration.method"}
#: keys whose comma list is one list value, never a sweep: ``test.calibration.gamma=0,0.5,1``
#: scores one head with every value in one pass (``config.parse_overrides``)
LIST_KEYS = ("test.calibration.gamma", "plugins")
CALIBRATIONS = ("none", "norcal")


@dataclass(frozen=True)
class CalibrationSettings:
    """Post-hoc test-time calibration of a head's scores (``models.calibration``): NorCal
    (Pan et al. 2021). Test-time only, so it enters no cache key."""

    method: str = setting("none", choice(*CALIBRATIONS))
    #: NorCal's exponent: class c's score is divided by N_c^gamma; a list scores the head
    #: once per value, in the same frozen pass (0 = the head's own scores, exactly)
    gamma: tuple[float, ...] = setting((0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
                                       list_of(number(0, 100), nonempty=True))
    #: N_c: train images that hold class c (the release's LVIS ``image_count``) or instances
    counts: str = setting("images", choice("images", "instances"))
    #: how the reported gamma is picked from several: ``heldout`` = on images generated from
    #: the train distribution that no stage sees (generated sets only); ``none`` = none
    #: picked, every gamma reported
    select: str = setting("heldout", choice("heldout", "none"))
    #: held-out images of a class: this fraction of its train images, at least one
    heldout_fraction: float = setting(0.1, number(0, 1, lo_open=True))
    #: the held-out metric the pick maximises (ties: the smaller gamma)
    select_metric: str = setting("AP", choice("AP", "APr", "APc", "APf", "AP50", "AP75"))


@dataclass(frozen=True)
class TestSettings:
    scales: tuple[int, ...] | None = setting(None, list_of(integer(1, 100_000), nonempty=True,
                                                           null=True))
    flip: bool = setting(False, boolean)
    max_detections: int = setting(300, integer(1, 1_000_000))
    expand_hierarchy: bool = setting(False, boolean)
    #: Open Images ``eval dets=``: predictions for images not in the ground truth
    unknown_images: str = setting("ignore", choice("ignore", "error"))
    #: LVIS protocol: standard (300 per image), fixed or pooled (Dave et al. 2021); a list
    #: reports each side by side
    protocol: str | tuple[str, ...] = setting("standard", one_or_list(choice(*PROTOCOLS)))
    #: fixed / pooled: detections kept per category over the whole set (K)
    dets_per_class: int = setting(10_000, integer(1, 10**8))
    #: Cascade R-CNN: mean of the stages' logits, then the loss's activation (the ACSL
    #: release, mmdetection), or mean of the stages' scores (detectron2)
    cascade_scores: str = setting("mean_logits", choice("mean_logits", "mean_probs"))
    #: LVIS rules from this project's evaluator, or from the official lvis-api (extra
    #: ``.[lvis]``; the standard protocol only: equal numbers, slower)
    backend: str = setting("ours", choice("ours", "lvis-api"))
    calibration: CalibrationSettings = section(CalibrationSettings)

    @property
    def protocols(self) -> tuple[str, ...]:
        """The requested protocols, in the order given."""
        return (self.protocol,) if isinstance(self.protocol, str) else tuple(self.protocol)

    @property
    def canonical(self) -> bool:
        """Whether these are the settings the cached stage-1 row was scored with (K only
        matters to the fixed and pooled protocols; calibration adds rows of its own and
        leaves the plain row as it is)."""
        if self.protocols != ("standard",):
            return False
        return replace(self, protocol="standard", dets_per_class=10_000,
                       calibration=CalibrationSettings()) == TestSettings()


#: a head's classifier layer (``loss.classifier``): torchvision's plain linear ``cls_score``,
#: or the Seesaw release's normalised (cosine) one (``models.classifier``)
CLASSIFIERS = ("linear", "normed")


@dataclass(frozen=True)
class LossSettings:
    """One head's loss: its registry name and parameters (the loss validates them), and
    the classifier layer the head trains with it. The layer's keys sit in the loss node
    (``loss.classifier=normed``) because the node is what a head is: a ``loss.*`` comma list
    makes heads of one stage-2 pass, a preset (``loss=seesaw_normed``) sets them with the
    loss they belong to, and a head's checkpoint saves the node, so ``eval ckpt=`` rebuilds
    the same layer. They enter the node (``as_dict``: the head's label, id, stage-2 key and
    checkpoint) only when the layer is not the default one, so every linear head stays
    what it was; ``conf_groups.LOSS_LAYER_KEYS`` names them for the loss presets."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    #: linear (``nn.Linear``) or normed: T * cos(x, w_j) + b_j (Seesaw's release)
    classifier: str = setting(CLASSIFIERS[0], choice(*CLASSIFIERS))
    #: normed only: T, the scale of the cosines (the release's ``tempearture=20``)
    temperature: float = setting(20.0, number(0, 1e6, lo_open=True))

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **self.params}
        if self.classifier != CLASSIFIERS[0]:
            out.update(classifier=self.classifier, temperature=self.temperature)
        return out


@dataclass(frozen=True)
class Settings:
    """Everything one run (or one head of it) is configured with, checked and typed."""

    xi: float = setting(0.7, number(0, 1, lo_open=True, hi_open=True))
    seed: int = setting(0, integer(0, SEED_MAX), caches=(STAGE1, STAGE2))
    device: str = setting("auto", choice("auto", "cpu", "cuda"), outcome=False)
    output_root: str = setting("outputs", text(), outcome=False)
    run_name: str | None = setting(None, text(null=True), outcome=False)
    out: str | None = setting(None, text(null=True), outcome=False)
    ckpt: str | None = setting(None, text(null=True), outcome=False)
    dets: str | None = setting(None, text(null=True), outcome=False)
    ann: str | None = setting(None, text(null=True), outcome=False)
    train_ann: str | None = setting(None, text(null=True), outcome=False)
    progress: bool = setting(True, boolean, outcome=False)
    tracker: str = setting("none", choice("none", "tensorboard", "wandb"), outcome=False)
    amp: str = setting("off", choice(*AMP_MODES), caches=(STAGE1, STAGE2),
                       changed_only=(STAGE1,))
    #: start stage 1 from this detector; its file's digest enters the stage-1 key
    init: str | None = setting(None, text(null=True), caches=(STAGE1,), changed_only=(STAGE1,))
    #: modules imported for the losses they register (a loss's name and parameters are
    #: what tells runs apart, not where its code came from)
    plugins: tuple[str, ...] = setting((), PLUGINS_RULE, outcome=False)
    test: TestSettings = section(TestSettings)
    schedule: ScheduleSettings = section(ScheduleSettings, caches=(STAGE2,))
    sampler: SamplerSettings = section(SamplerSettings, caches=(STAGE1, STAGE2),
                                       changed_only=(STAGE1,))
    #: the kind's own section (``settings.datasets.KINDS``); its generated-set fields are
    #: tagged DATA one by one
    dataset: DatasetSettings = section(SyntheticDataset, caches=(STAGE1,))
    backbone: BackboneSettings = kinds(BACKBONE_KINDS, "small", caches=(STAGE1,))
    #: added after the stage-1 key's format was fixed: Faster R-CNN keys stay as they were
    detector: DetectorSettings = kinds(DETECTOR_KINDS, "faster_rcnn", caches=(STAGE1,),
                                       changed_only=(STAGE1,))
    launcher: LauncherSettings = kinds(LAUNCHER_KINDS, "inprocess", caches=())
    loss: LossSettings = field(default_factory=lambda: LossSettings("acsl"))
    #: stage 1's loss (``schedule.stage1.loss``): its preset resolved against this config
    #: (``${xi}``, ``${seed}``, the dataset's ``loss_defaults``); the stage-1 key holds it
    stage1_loss: LossSettings = field(default_factory=lambda: LossSettings(STAGE1_LOSS))
    #: the resolved config these settings were read from (plain data): written as the
    #: run's ``config.yaml`` and the source of the cache keys' values
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_yaml(self) -> str:
        return yaml_text(dict(self.source))

    def as_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (a deep copy)."""
        import copy

        return copy.deepcopy(dict(self.source))
