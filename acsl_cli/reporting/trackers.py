"""Experiment trackers (``tracker=tensorboard|wandb``): the run's settings, its training
scalars and its final metrics, fed from the same ``event`` log records as
``events.jsonl``, so no layer below the pipeline knows a tracker exists.

Scalars: ``<stage>/<name>`` against ``<stage>/iter`` (stage1, stage2), validation during
training as ``val_<stage>/<model>/<metric>`` against the epoch, and the final metrics as
``eval/<model>/<metric>``. ``<model>`` is one name per model in all three (``model_tag``):
a head's id (its ``heads/<id>/`` folder, the name of its stage-2 loss curve), ``stage1``
for the stage-1 detector; rows derived from a model (an LVIS protocol, a NorCal gamma) add
the suffix their metrics.json label has (``acsl_xi0.7_bgofficial [fixed]``).

W&B honours its own environment (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ``WANDB_DIR``);
without ``WANDB_MODE`` and with no answer from its server, it runs offline with one warning
(``wandb_mode``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from acsl_cli.errors import ConfigError
from acsl_cli.layout import STAGE1_ROW, is_stage1_row

_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}
PROBE_SECONDS = 3.0
log = logging.getLogger("acsl")


def check_tracker(name: str) -> None:
    """One line before any work when the tracker's package is not installed."""
    package = _PACKAGE.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"tracker={name} needs the {package} package "
                          f"(pip install 'acsl-cli[{name}]')")


STAGE1_TAG = "stage1"
#: the names the stage-1 detector's rows have in events: its metrics row, and "model" (the
#: stage-1 cache scores the detector under that name)
_STAGE1_NAMES = (STAGE1_ROW, "model")


def model_tag(model: str, heads: Mapping[str, str]) -> str:
    """The tracker name of an evaluated model: events name a head by its id (final
    metrics, loss curves) or by its label (validation, NorCal rows); ``heads`` maps id ->
    label. A name that is, or starts with, a label (then a space and a suffix) gets the id
    in its place; the longest label wins (``bce`` is a prefix of ``bce norcal ...``)."""
    if model in heads:
        return model
    names = {label: hid for hid, label in heads.items()}
    names.update(dict.fromkeys(_STAGE1_NAMES, STAGE1_TAG))
    end = model.find(")")  # another stage-1 loss's row: "stage1 (eqlv2)"
    if end > 0 and is_stage1_row(model[:end + 1]):
        names[model[:end + 1]] = STAGE1_TAG
    for label in sorted(names, key=len, reverse=True):
        if model == label or model.startswith(label + " "):
            return names[label] + model[len(label):]
    return model


def _scalars(event: object, heads: Mapping[str, str] | None = None
             ) -> tuple[str, int, dict[str, float]] | None:
    """(prefix, step, values) of a training or evaluation event, else None; ``heads``: id
    -> label of the run's heads (``model_tag``)."""
    if not isinstance(event, dict):
        return None
    if event.get("type") == "train":
        values = {k: float(v) for k, v in event.items() if k not in (
            "type", "stage", "iter", "epoch", "replayed") and isinstance(v, (int, float))}
        return str(event["stage"]).replace(" ", ""), int(event["iter"]), values
    if event.get("type") == "eval":
        values = {k: float(v) for k, v in event.items() if k not in (
            "type", "model", "images", "stage", "epoch") and isinstance(v, float) and v == v}
        model = model_tag(str(event["model"]), heads or {})
        if "epoch" in event:  # validation during training: val_<stage>/<model>/<metric>
            stage = str(event["stage"]).replace(" ", "")
            return f"val_{stage}/{model}", int(event["epoch"]), values
        return f"eval/{model}", 0, values
    return None


class TensorBoardHandler(logging.Handler):
    """Scalars and the settings (as text) for TensorBoard."""

    def __init__(self, folder: Path, config: dict[str, Any], config_text: str,
                 heads: Mapping[str, str] | None = None) -> None:
        super().__init__(logging.INFO)
        from torch.utils.tensorboard import SummaryWriter

        self._heads = dict(heads or {})
        self._writer = SummaryWriter(str(folder))
        self._writer.add_text("config", "```\n" + config_text + "\n```", 0)

    def emit(self, record: logging.LogRecord) -> None:
        parsed = _scalars(getattr(record, "event", None), self._heads)
        if parsed is None:
            return
        prefix, step, values = parsed
        for k, v in values.items():
            self._writer.add_scalar(f"{prefix}/{k}", v, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        super().close()


def wandb_mode() -> str | None:
    """W&B's mode: ``WANDB_MODE`` when set (W&B reads it); otherwise online only if its
    server answers within a few seconds, else offline with one warning, instead of W&B's
    minutes of retries and tracebacks (``wandb sync`` uploads an offline run later)."""
    if os.environ.get("WANDB_MODE"):
        return None
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=PROBE_SECONDS).close()
    except OSError:
        log.warning("tracker=wandb: %s does not answer; W&B runs offline (set WANDB_MODE to "
                    "choose; upload later with wandb sync)", url.hostname)
        return "offline"
    return None


class WandbHandler(logging.Handler):
    """A W&B run per acsl run; its files go to ``<output_root>/wandb`` (not into the run
    folder, which is renamed when it is complete)."""

    def __init__(self, folder: Path, config: dict[str, Any], name: str,
                 heads: Mapping[str, str] | None = None) -> None:
        super().__init__(logging.INFO)
        import wandb

        self._heads = dict(heads or {})
        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "acsl"), name=name,
                               dir=os.environ.get("WANDB_DIR", str(folder)), config=config,
                               reinit="create_new", mode=wandb_mode())
        for stage in ("stage1", "stage2"):
            self._run.define_metric(f"{stage}/iter")
            self._run.define_metric(f"{stage}/*", step_metric=f"{stage}/iter")
            self._run.define_metric(f"val_{stage}/epoch")
            self._run.define_metric(f"val_{stage}/*", step_metric=f"val_{stage}/epoch")

    def emit(self, record: logging.LogRecord) -> None:
        parsed = _scalars(getattr(record, "event", None), self._heads)
        if parsed is None:
            return
        prefix, step, values = parsed
        if prefix.startswith("eval/"):  # final metrics: the run's summary
            for k, v in values.items():
                self._run.summary[f"{prefix}/{k}"] = v
            return
        counter = f"{prefix.split('/')[0]}/epoch" if prefix.startswith("val_") else \
            f"{prefix}/iter"
        self._run.log({counter: step, **{f"{prefix}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        self._run.finish()
        super().close()


def tracker_handlers(name: str, run_folder: Path, output_root: Path, config: dict[str, Any],
                     config_text: str, run_name: str, heads: Mapping[str, str] | None = None
                     ) -> list[logging.Handler]:
    """The handler of ``tracker=name`` (none for ``none``): TensorBoard files in the run
    folder's ``tensorboard/``, W&B runs under ``<output_root>/wandb``; ``heads``: id ->
    label of the run's heads, so that each model has one name there (``model_tag``)."""
    if name == "tensorboard":
        return [TensorBoardHandler(run_folder / "tensorboard", config, config_text, heads)]
    if name == "wandb":
        return [WandbHandler(Path(output_root), config, run_name, heads)]
    return []
