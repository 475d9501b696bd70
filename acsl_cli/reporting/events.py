"""Machine-readable run records: every logged iteration and evaluation as one JSON line
(``events.jsonl``), and the same scalars for TensorBoard when it is installed.

The engine and the pipeline log through the ``acsl`` logger and attach the structured
record as ``extra={"event": {...}}``; these handlers pick those records up, so no layer
below the pipeline knows about files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from acsl_cli.files import strict_json


class EventsHandler(logging.Handler):
    """Appends each record's ``event`` dict (plus a timestamp) as a strict-JSON line."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if not isinstance(event, dict):
            return
        line = json.dumps(strict_json({"time": round(time.time(), 3), **event}),
                          allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()


class TensorBoardHandler(logging.Handler):
    """Training losses and lr as ``<stage>/<name>`` at the iteration, evaluation metrics as
    ``eval/<model>/<metric>``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(logging.INFO)
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(folder))

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if not isinstance(event, dict):
            return
        if event.get("type") == "train":
            step, stage = int(event["iter"]), str(event["stage"]).replace(" ", "")
            for k, v in event.items():
                if k not in ("type", "stage", "iter", "epoch") and isinstance(v, (int, float)):
                    self._writer.add_scalar(f"{stage}/{k}", v, step)
        elif event.get("type") == "eval":
            for k, v in event.items():
                if isinstance(v, float) and v == v:
                    self._writer.add_scalar(f"eval/{event['model']}/{k}", v, 0)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        super().close()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def event_handlers(folder: Path) -> list[logging.Handler]:
    """events.jsonl always; TensorBoard files under ``tensorboard/`` if it is installed."""
    handlers: list[logging.Handler] = [EventsHandler(folder / "events.jsonl")]
    if tensorboard_available():
        handlers.append(TensorBoardHandler(folder / "tensorboard"))
    return handlers
