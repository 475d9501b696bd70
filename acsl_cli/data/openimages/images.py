"""The Open Images image check: which file each image is, and its size from the header.

Apart from the loader (``loader``) because it is the only part of loading that touches
the image folder: one listing instead of a stat per image, then one header read per image
(~1.7 M at full size). ``load_openimages(check_images=False)`` skips it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from acsl_cli.data.openimages.csv_parse import BOXES, ParsedSplit
from acsl_cli.data.openimages.split import IMAGE_EXTENSIONS, OpenImagesFiles, Progress
from acsl_cli.errors import DataError


def image_info(parsed: ParsedSplit, files: OpenImagesFiles, progress: Progress | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extension code and header size of every image; one folder listing, not N stats."""
    image_dir = Path(files.image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    with os.scandir(image_dir) as entries:
        present = {e.name for e in entries if e.name.endswith(IMAGE_EXTENSIONS)}
    ids = parsed.image_ids.tolist()
    exts = np.zeros(len(ids), dtype=np.uint8)
    missing: list[int] = []
    for i, image_id in enumerate(ids):
        for k, ext in enumerate(IMAGE_EXTENSIONS):
            if image_id + ext in present:
                exts[i] = k
                break
        else:
            missing.append(i)
    del present
    if missing:
        i = missing[0]
        csv_file = files.boxes_csv if parsed.first_source[i] == BOXES else files.labels_csv
        more = f"; {len(missing) - 1} more images missing" if len(missing) > 1 else ""
        raise DataError(f"{image_dir / (ids[i] + IMAGE_EXTENSIONS[0])}: image file not found "
                        f"(nor {', '.join(IMAGE_EXTENSIONS[1:])}); {ids[i]} is first listed "
                        f"in {csv_file} row {parsed.first_row[i]}{more}")
    widths = np.zeros(len(ids), dtype=np.int32)
    heights = np.zeros(len(ids), dtype=np.int32)
    for i, image_id in enumerate(ids):
        path = image_dir / (image_id + IMAGE_EXTENSIONS[exts[i]])
        try:
            with Image.open(path) as im:
                widths[i], heights[i] = im.size
        except (OSError, Image.DecompressionBombError) as e:  # the bomb error is no OSError
            raise DataError(f"{path}: cannot read the image header ({e})") from None
        if progress is not None and (i + 1) % 4096 == 0:
            progress(i + 1, len(ids))
    return exts, widths, heights
