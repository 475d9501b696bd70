"""Writing a generated benchmark so that it is complete or absent, whatever stops it.

A set is generated into a hidden per-process sibling folder and renamed into place when
its annotation files are written; until then nothing under the final name exists. The
partial folder goes on any way out (an exception, Ctrl-C, SIGTERM raised by the CLI), and
its host-and-pid name lets the next generator remove a SIGKILLed one's (``clean_stale``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from acsl_cli.files import tmp_name, writing
from acsl_cli.locks import clean_stale


@contextmanager
def partial_folder(out: Path) -> Iterator[Path]:
    """A fresh hidden sibling of ``out`` to generate into, removed on the way out unless
    ``publish`` renamed it (dead generators' leftovers beside it are removed first)."""
    clean_stale(out.parent)
    tmp = tmp_name(out, "partial")
    try:
        with writing(tmp):
            tmp.mkdir(parents=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, info: dict, categories: list[dict], train: tuple,
            val: tuple) -> Path:
    """Write ``train.json`` / ``val.json`` (each an (images, annotations) pair) into ``tmp``
    and rename ``tmp`` to ``out``: a set is either complete or absent."""
    for name, (imgs, anns) in (("train", train), ("val", val)):
        data = {"info": info, "categories": categories, "images": imgs, "annotations": anns}
        with writing(tmp / f"{name}.json"):
            (tmp / f"{name}.json").write_text(json.dumps(data))
    shutil.rmtree(out, ignore_errors=True)
    with writing(out):
        os.replace(tmp, out)
    return out
