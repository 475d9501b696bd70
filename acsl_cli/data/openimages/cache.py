"""The ``.npz`` cache of one parsed Open Images split: file name, key, read, write.

Apart from the loader (``loader``) because it is storage, not parsing: parsing the full
train CSVs takes minutes, reading the cached arrays back (no pickle) takes seconds. A
cache that is stale, damaged or inconsistent is rebuilt; one that cannot be written only
costs a re-parse next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from acsl_cli.data.openimages.split import OpenImagesFiles, OpenImagesSplit
from acsl_cli.errors import DataError
from acsl_cli.files import tmp_name
from acsl_cli.locks import clean_stale

log = logging.getLogger("acsl")

FORMAT_VERSION = 2  # bump when the cached arrays change meaning (2: float64 boxes, zero-area kept)


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: not found ({e.strerror})") from None
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_file(files: OpenImagesFiles, classes_csv: Path, cache_dir: Path, name: str,
               check_images: bool) -> tuple[Path, str]:
    """(cache file, key stored in it) of a split; a missing input is a ``DataError``."""
    inputs = [Path(classes_csv), Path(files.boxes_csv)]
    inputs += [Path(files.labels_csv)] if files.labels_csv is not None else []
    inputs += [Path(files.image_dir)] if check_images else []
    stats = [_stat(p) for p in inputs]
    ident = json.dumps([FORMAT_VERSION, check_images, [s[0] for s in stats]])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"openimages-{name}-{digest}.npz"
    key = json.dumps({"version": FORMAT_VERSION, "check_images": check_images,
                      "inputs": stats})
    return path, key


ARRAYS = tuple(f.name for f in fields(OpenImagesSplit) if not f.name.startswith("skipped"))


def _consistent(s: OpenImagesSplit) -> bool:
    n = s.num_images
    sized = (s.image_exts, s.widths, s.heights)
    csr = ((s.box_offsets, s.box_labels), (s.pos_offsets, s.pos_labels),
           (s.neg_offsets, s.neg_labels))
    return (all(len(a) == n for a in sized) and s.boxes.shape == (len(s.box_labels), 4)
            and len(s.group_of) == len(s.box_labels)
            and all(len(off) == n + 1 and off[-1] == len(vals) for off, vals in csr))


def read_cache(path: Path, key: str) -> OpenImagesSplit | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            counts = z["skipped"]
            split = OpenImagesSplit(**{k: z[k] for k in ARRAYS},
                                    skipped_degenerate=int(counts[0]),
                                    skipped_unknown_labels=int(counts[1]))
        if _consistent(split):
            return split
        reason = "inconsistent arrays"
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
        reason = " ".join(str(e).split())[:200]
    log.warning(f"{path}: damaged Open Images cache, rebuilding it ({reason})")
    return None


def write_cache(path: Path, key: str, split: OpenImagesSplit) -> None:
    """Atomic (temp file + rename); a cache that cannot be written only costs a re-parse.
    Temp files of processes killed mid-write (hundreds of MB at full size) are removed."""
    clean_stale(path.parent)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(key), **{k: getattr(split, k) for k in ARRAYS},
                     skipped=np.array([split.skipped_degenerate,
                                       split.skipped_unknown_labels], dtype=np.int64))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        log.warning(f"{path}: cannot write the Open Images cache ({e})")
    finally:
        tmp.unlink(missing_ok=True)
