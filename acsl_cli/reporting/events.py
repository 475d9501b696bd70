"""Machine-readable run records: every logged iteration and evaluation as one JSON line
(``events.jsonl``); ``trackers`` sends the same records to TensorBoard or W&B.

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
from acsl_cli.layout import EVENTS


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


def event_handlers(folder: Path) -> list[logging.Handler]:
    """``events.jsonl`` (trackers: ``reporting.trackers``)."""
    return [EventsHandler(folder / EVENTS)]
