"""Boxes on images: ground truth and detections coloured by frequency group, and pages of
crops (a rare class's false positives next to what they hit). Pure PIL, no torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

GROUP_COLOURS = {"r": (235, 64, 52), "c": (245, 176, 30), "f": (52, 140, 235)}
GT_COLOUR = (255, 255, 255)
MIN_SIDE = 384  # small images (the embedded set's 128 px) are enlarged to be readable


@dataclass(frozen=True)
class Box:
    """One box to draw: xywh in image pixels, a class name and group, a score or None
    (ground truth)."""

    xywh: tuple[float, float, float, float]
    name: str
    group: str
    score: float | None = None


def scale_for(image: Image.Image) -> int:
    """Integer enlargement that brings the shorter side to at least ``MIN_SIDE``."""
    return max(1, -(-MIN_SIDE // max(1, min(image.size))))


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """A copy of ``image`` (enlarged by ``scale_for``) with every box and its label:
    ground truth in white, detections in their class's group colour with the score."""
    k = scale_for(image)
    out = image.convert("RGB").resize((image.width * k, image.height * k), Image.NEAREST)
    pen = ImageDraw.Draw(out)
    for b in boxes:
        x, y, w, h = (v * k for v in b.xywh)
        colour = GT_COLOUR if b.score is None else GROUP_COLOURS.get(b.group, GT_COLOUR)
        pen.rectangle([x, y, x + w, y + h], outline=colour, width=2)
        text = b.name if b.score is None else f"{b.name} {b.score:.2f}"
        tx, ty = x + 2, max(0.0, y - 11)
        left, top, right, bottom = pen.textbbox((tx, ty), text)
        pen.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
        pen.text((tx, ty), text, fill=colour)
    return out


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
