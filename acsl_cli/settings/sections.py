"""The typed settings of a run: every option declared once, with its default, its rule
and the cache keys it enters (see ``declare``).

Adding an option: one ``setting(...)`` line in the section it belongs to, and one line in
the yaml that documents it (``conf/``). Nothing else reads config keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.settings.declare import DATA, STAGE1, STAGE2, kind, kinds, section, setting
from acsl_cli.settings.rules import (
    Rule,
    anything,
    boolean,
    choice,
    choice_in,
    integer,
    list_of,
    number,
    one_or_list,
    text,
)

SEED_MAX = 2**31 - 1  # numpy and torch generators both take it; seed + 1 stays valid
DATASET_KINDS = ("synthetic", "synthetic_lvis", "lvis", "openimages", "openimages_synthetic")
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
    stage1: StageSettings = section(StageSettings, caches=(STAGE1, STAGE2))
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


#: ``backbone=NAME`` -> its settings class (``kind``): a key of another backbone is refused
BACKBONE_KINDS: dict[str, type] = {}
#: the paper's ResNet / ResNeXt FPN backbones (``models.backbones.ARCHS``)
RESNETS = ("r50", "r101", "r152", "x101_64x4d", "x101_32x8d")


def _backbone(name: str) -> Any:
    return setting(name, choice_in(BACKBONE_KINDS))


class BackboneSettings:
    """The trunk and the detector sizes that go with it (``backbone=``); each kind's
    class declares its own keys and defaults."""

    name: str
    anchor_sizes: tuple[int, ...]
    representation_size: int
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int
    roi_batch_size_per_image: int
    pre_nms_topk: int


_ANCHOR = list_of(integer(1, 100_000), nonempty=True)
_TOP_N = integer(1, 10**7)


@kind(BACKBONE_KINDS)
@dataclass(frozen=True)
class SmallBackboneSettings(BackboneSettings):
    """``small``: ResNet-10 with an FPN of ``fpn_channels``, trained from scratch."""

    name: str = _backbone("small")
    fpn_channels: int = setting(64, integer(1, 4096))
    anchor_sizes: tuple[int, ...] = setting((16, 32, 64, 128), _ANCHOR)
    representation_size: int = setting(256, integer(1, 65_536))
    rpn_pre_nms_top_n_train: int = setting(600, _TOP_N)
    rpn_post_nms_top_n_train: int = setting(300, _TOP_N)
    rpn_pre_nms_top_n_test: int = setting(300, _TOP_N)
    rpn_post_nms_top_n_test: int = setting(150, _TOP_N)
    roi_batch_size_per_image: int = setting(64, integer(1, 1_000_000))
    pre_nms_topk: int = setting(10000, integer(1, 10**8))


@kind(BACKBONE_KINDS, *RESNETS)
@dataclass(frozen=True)
class ResNetBackboneSettings(BackboneSettings):
    """The paper's ResNet / ResNeXt FPN (256 channels) with its ImageNet ``weights`` (null,
    a torchvision name, or a local file) and ``trainable_layers`` of the trunk."""

    name: str = _backbone("r50")
    weights: str | None = setting(None, text(null=True))
    trainable_layers: int = setting(3, integer(0, 5))
    anchor_sizes: tuple[int, ...] = setting((32, 64, 128, 256, 512), _ANCHOR)
    representation_size: int = setting(1024, integer(1, 65_536))
    rpn_pre_nms_top_n_train: int = setting(2000, _TOP_N)
    rpn_post_nms_top_n_train: int = setting(2000, _TOP_N)
    rpn_pre_nms_top_n_test: int = setting(1000, _TOP_N)
    rpn_post_nms_top_n_test: int = setting(1000, _TOP_N)
    roi_batch_size_per_image: int = setting(512, integer(1, 1_000_000))
    pre_nms_topk: int = setting(10000, integer(1, 10**8))


#: ``detector=NAME`` -> its settings class; ``models.detectors`` registers a builder under
#: the same name (``tests/test_cascade.py`` checks both list the same names)
DETECTOR_KINDS: dict[str, type] = {}


def _detector(name: str) -> Any:
    return setting(name, choice_in(DETECTOR_KINDS))


class DetectorSettings:
    """Which detector stage 1 trains (``detector=``); each kind's class declares its own
    keys, and a key of another detector is refused."""

    name: str


@kind(DETECTOR_KINDS)
@dataclass(frozen=True)
class FasterRCNNSettings(DetectorSettings):
    name: str = _detector("faster_rcnn")
    #: one box regression shared by all classes (mmdetection's ``reg_class_agnostic``)
    #: instead of one per class
    class_agnostic_boxes: bool = setting(False, boolean)


@kind(DETECTOR_KINDS)
@dataclass(frozen=True)
class CascadeRCNNSettings(DetectorSettings):
    """Cai & Vasconcelos 2018: IoU 0.5/0.6/0.7, tighter box-coder weights as the boxes
    improve; one entry per stage, the lengths must agree (``config_rules``)."""

    name: str = _detector("cascade_rcnn")
    iou_thresholds: tuple[float, ...] = setting(
        (0.5, 0.6, 0.7), list_of(number(0, 1, lo_open=True, hi_open=True), nonempty=True))
    stage_weights: tuple[float, ...] = setting((1.0, 0.5, 0.25),
                                               list_of(number(0, 1e6), nonempty=True))
    box_coder_weights: tuple[tuple[float, ...], ...] = setting(
        ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)),
        list_of(list_of(number(0, 1e6, lo_open=True), nonempty=True), nonempty=True))


@dataclass(frozen=True)
class DatasetSettings:
    """The common keys of a dataset; its kind's own keys are in ``params`` (checked by
    ``settings.datasets``) and all of them enter the data and stage-1 keys."""

    name: str = setting("synthetic", text())
    kind: str = setting("synthetic", choice(*DATASET_KINDS))
    min_size: int = setting(128, integer(1, 100_000))
    max_size: int = setting(128, integer(1, 100_000))
    #: dataset-dependent loss parameters (``bags_bins``, ``eql_lambda``): losses read them
    #: through interpolation, so they enter the stage-2 key through the heads
    loss_defaults: Mapping[str, Any] | None = setting(None, anything(), caches=())
    params: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key) if key in _COMMON else self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return key in _COMMON or key in self.params


_COMMON = ("name", "kind", "min_size", "max_size", "loss_defaults")


@dataclass(frozen=True)
class LossSettings:
    """One head's loss: its registry name and parameters (the loss validates them)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


#: ``launcher=NAME`` -> its settings class: a key of another launcher is refused
LAUNCHER_KINDS: dict[str, type] = {}


def _sbatch_options() -> Rule:
    """``launcher.additional``: sbatch option name -> one value on one line
    (``{mail-type: END}``; ``true`` for a flag such as ``exclusive``)."""
    import re

    name_ok = re.compile(r"[A-Za-z][A-Za-z0-9_-]*").fullmatch

    def check(key: str, v: Any) -> None:
        if v is None:
            return
        if not isinstance(v, Mapping):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise ConfigError(f"{key}={shown}: must be a mapping of sbatch options to "
                              "values, e.g. {mail-type:END}")
        for name, value in v.items():
            if not isinstance(name, str) or not name_ok(name):
                raise ConfigError(f"{key}: {name!r} is not an sbatch option name")
            if isinstance(value, bool) and not value or not isinstance(
                    value, (str, int, float)) or any(c in str(value) for c in "\0\n\r"):
                raise ConfigError(f"{key}.{name}={str(value)[:60]!r}: must be one value on "
                                  "one line (a string or number; true for a flag)")

    return Rule(check, lambda v: {"comment": "acsl"} if v != {"comment": "acsl"} else None)


class LauncherSettings:
    """Where ``acsl sweep`` runs its jobs (``conf/launcher/``); each launcher's class
    declares its own keys. A launcher cannot change a result, so nothing here enters a
    cache key or tells runs apart (``outcome=False``)."""

    name: str
    wait: bool


def _launcher(name: str) -> Any:
    return setting(name, choice_in(LAUNCHER_KINDS), outcome=False)


@dataclass(frozen=True)
class _Waits(LauncherSettings):
    #: wait for the jobs, then write the sweep's tables; false: submit and return
    wait: bool = setting(True, boolean, outcome=False)


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class InprocessLauncherSettings(_Waits):
    """Every run in this process, one after another (always waits)."""

    name: str = _launcher("inprocess")


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class LocalLauncherSettings(_Waits):
    name: str = _launcher("local")
    #: jobs at once, and GPUs per job (its own CUDA_VISIBLE_DEVICES; > 1: torchrun)
    max_parallel: int = setting(1, integer(1, 4096), outcome=False)
    gpus_per_run: int = setting(0, integer(0, 4096), outcome=False)


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class SlurmLauncherSettings(_Waits):
    """sbatch's --partition, --account, --qos, --nodes, ... through submitit."""

    name: str = _launcher("slurm")
    partition: str | None = setting(None, text(null=True), outcome=False)
    account: str | None = setting(None, text(null=True), outcome=False)
    qos: str | None = setting(None, text(null=True), outcome=False)
    nodes: int = setting(1, integer(1, 100_000), outcome=False)
    gpus_per_node: int = setting(0, integer(0, 1024), outcome=False)
    cpus_per_task: int = setting(1, integer(1, 4096), outcome=False)
    mem_gb: float | None = setting(None, number(0, 1e7, lo_open=True, null=True),
                                   outcome=False)
    time_min: int = setting(60, integer(1, 10**7), outcome=False)
    constraint: str | None = setting(None, text(null=True), outcome=False)
    #: any other sbatch option, e.g. {mail-type: END}
    additional: Mapping[str, Any] | None = setting(None, _sbatch_options(), outcome=False)


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
    dataset: DatasetSettings = section(DatasetSettings, caches=(DATA, STAGE1))
    backbone: BackboneSettings = kinds(BACKBONE_KINDS, "small", caches=(STAGE1,))
    #: added after the stage-1 key's format was fixed: Faster R-CNN keys stay as they were
    detector: DetectorSettings = kinds(DETECTOR_KINDS, "faster_rcnn", caches=(STAGE1,),
                                       changed_only=(STAGE1,))
    launcher: LauncherSettings = kinds(LAUNCHER_KINDS, "inprocess", caches=())
    loss: LossSettings = field(default_factory=lambda: LossSettings("acsl"))
    #: the resolved config these settings were read from (plain data): written as the
    #: run's ``config.yaml`` and the source of the cache keys' values
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_yaml(self) -> str:
        return yaml_text(dict(self.source))

    def as_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (a deep copy)."""
        import copy

        return copy.deepcopy(dict(self.source))
