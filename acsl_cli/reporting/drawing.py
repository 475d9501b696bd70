"""Boxes on images (torchvision's ``draw_bounding_boxes``) with a colour legend below:
detections coloured by whether they match a ground-truth box, ground truth by whether a
drawn detection found it; and pages of crops (a rare class's false positives next to what
they hit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

Colour = tuple[int, int, int]
#: what each colour means, in the legend's order
KINDS: dict[str, tuple[str, Colour]] = {
    "tp": ("true positive", (46, 204, 64)),
    "fp": ("false positive", (255, 65, 54)),
    "found": ("ground truth, found", (255, 255, 255)),
    "missed": ("ground truth, missed", (255, 220, 0)),
}
MIN_SIDE = 384  # small images (the embedded set's 128 px) are enlarged to be readable
LINE = 2  # box outline width in (enlarged) pixels
LEGEND_ROW = 16  # legend row height in pixels
LEGEND_BACKGROUND = (24, 24, 24)


@dataclass(frozen=True)
class Box:
    """One box to draw: xywh in image pixels, a class name and group (r/c/f), a score or
    None (ground truth), and its kind (a key of ``KINDS``)."""

    xywh: tuple[float, float, float, float]
    name: str
    group: str
    score: float | None
    kind: str


def scale_for(image: Image.Image) -> int:
    """Integer enlargement that brings the shorter side to at least ``MIN_SIDE``."""
    return max(1, -(-MIN_SIDE // max(1, min(image.size))))


def draw_boxes(image: Image.Image, boxes: Sequence[Box], note: str = "") -> Image.Image:
    """A copy of ``image`` (enlarged by ``scale_for``) with every box in its kind's colour
    and a label (class, group, score) on the colour, ground truth first so that detections
    lie on top; below it the legend and ``note`` (what was left out)."""
    k = scale_for(image)
    out = image.convert("RGB").resize((image.width * k, image.height * k), Image.NEAREST)
    if boxes:
        xyxy = torch.tensor([[x, y, x + max(w, 0), y + max(h, 0)]
                             for x, y, w, h in (b.xywh for b in boxes)], dtype=torch.float64) * k
        labels = [b.name + (f" ({b.group})" if b.group else "")
                  + ("" if b.score is None else f" {b.score:.2f}") for b in boxes]
        drawn = draw_bounding_boxes(pil_to_tensor(out), xyxy, labels,
                                    [KINDS[b.kind][1] for b in boxes], width=LINE,
                                    label_colors="black", fill_labels=True)
        out = to_pil_image(drawn)
    return with_legend(out, note)


def legend_rows(width: int, note: str = "") -> list[list[tuple[str, Colour | None]]]:
    """The legend's entries, (text, swatch colour; None for the note), in rows that fit
    ``width`` pixels (a 10 px swatch, its text, a gap)."""
    font = ImageFont.load_default()
    rows: list[list[tuple[str, Colour | None]]] = [[]]
    used = 0
    for text, colour in KINDS.values():
        need = 14 + int(font.getlength(text)) + 12
        if rows[-1] and used + need > width:
            rows.append([])
            used = 0
        rows[-1].append((text, colour))
        used += need
    if note:
        rows.append([(note, None)])
    return rows


def with_legend(image: Image.Image, note: str = "") -> Image.Image:
    """``image`` above a dark strip: one swatch and its meaning per kind, then ``note``."""
    rows = legend_rows(image.width, note)
    page = Image.new("RGB", (image.width, image.height + LEGEND_ROW * len(rows) + 4),
                     LEGEND_BACKGROUND)
    page.paste(image, (0, 0))
    pen = ImageDraw.Draw(page)
    for r, row in enumerate(rows):
        x, y = 4, image.height + 4 + r * LEGEND_ROW
        for text, colour in row:
            if colour is not None:
                pen.rectangle([x, y + 1, x + 9, y + 10], fill=colour)
                x += 14
            pen.text((x, y), text, fill=(230, 230, 230))
            x += int(pen.textlength(text)) + 12
    return page


def crop_page(crops: Sequence[tuple[Image.Image, str]], columns: int = 4,
              cell: int = 160, title: str = "") -> Image.Image:
    """A grid of crops, each scaled into a ``cell`` square with its caption below."""
    rows = max(1, -(-len(crops) // columns))
    head = 18 if title else 0
    page = Image.new("RGB", (columns * cell, head + rows * (cell + 14)), (24, 24, 24))
    pen = ImageDraw.Draw(page)
    if title:
        pen.text((4, 3), title, fill=(255, 255, 255))
    for i, (crop, caption) in enumerate(crops):
        r, c = divmod(i, columns)
        thumb = crop.convert("RGB")
        f = (cell - 4) / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * f)), max(1, round(thumb.height * f))),
                             Image.NEAREST)
        x, y = c * cell + 2, head + r * (cell + 14) + 2
        page.paste(thumb, (x, y))
        pen.text((x, y + cell - 2), caption, fill=(255, 255, 255))
    return page
