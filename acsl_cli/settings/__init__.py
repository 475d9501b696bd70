"""Typed settings: the composed config read once into frozen dataclasses (``Settings``)."""

from acsl_cli.settings.build import loss_settings, settings_from
from acsl_cli.settings.declare import CACHES, DATA, STAGE1, STAGE2, declared
from acsl_cli.settings.detection import (
    BackboneSettings,
    CascadeRCNNSettings,
    DetectorSettings,
    FasterRCNNSettings,
    ResNetBackboneSettings,
    SmallBackboneSettings,
)
from acsl_cli.settings.keys import config_hash, not_outcome_keys, stage1_key, stage2_key
from acsl_cli.settings.launchers import (
    InprocessLauncherSettings,
    LauncherSettings,
    LocalLauncherSettings,
    SlurmLauncherSettings,
)
from acsl_cli.settings.sections import (
    CalibrationSettings,
    DatasetSettings,
    LossSettings,
    SamplerSettings,
    ScheduleSettings,
    Settings,
    Stage2Settings,
    StageSettings,
    TestSettings,
    yaml_text,
)

__all__ = ["CACHES", "DATA", "STAGE1", "STAGE2", "BackboneSettings", "CalibrationSettings",
           "CascadeRCNNSettings", "DatasetSettings", "DetectorSettings", "FasterRCNNSettings",
           "InprocessLauncherSettings", "LauncherSettings", "LocalLauncherSettings",
           "LossSettings", "ResNetBackboneSettings", "SamplerSettings", "ScheduleSettings",
           "Settings", "SlurmLauncherSettings", "SmallBackboneSettings", "Stage2Settings",
           "StageSettings",
           "TestSettings", "config_hash", "declared", "loss_settings", "not_outcome_keys",
           "settings_from", "stage1_key", "stage2_key", "yaml_text"]
