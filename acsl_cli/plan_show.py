"""``acsl show``'s arguments -> what to draw (its own keys; the rest apply to the head's
saved settings as for ``acsl eval``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acsl_cli.config import parse_overrides
from acsl_cli.errors import ConfigError
from acsl_cli.plan import EvalPlan

SHOW_KEYS = ("ckpt", "dets", "ann", "image_dir", "out_dir", "images", "score", "top",
             "classes")


@dataclass(frozen=True)
class ShowPlan:
    """``acsl show``: what to draw (a head, or a results file with annotations and images)
    and how much of it."""

    ckpt: str | None
    dets: str | None
    ann: str | None
    image_dir: str | None
    out: str  # the folder the pictures go to (``out_dir=``)
    images: int
    score: float
    top: int  # at most this many detections per image, highest scores first
    classes: tuple[str | int, ...] | None
    overrides: tuple[str, ...]  # applied to the head's saved settings, as for eval

    def as_eval(self) -> EvalPlan:
        return EvalPlan(self.ckpt, None, None, None, None, self.overrides)


def plan_show(overrides: list[str] | tuple[str, ...]) -> ShowPlan:
    """Check ``acsl show``'s keys with the same one-line rules as every setting."""
    from acsl_cli.settings.rules import integer, list_of, number, text

    values: dict[str, Any] = {"out_dir": "show", "images": 8, "score": 0.3, "top": 10,
                              "classes": None}
    rest = []
    for o in parse_overrides(overrides):
        if o.key == "out":
            raise ConfigError(f"{o.text}: acsl show writes a folder, given as out_dir=DIR "
                              "(out= is the JSON file of train, eval, sweep and data stats)")
        if o.key not in SHOW_KEYS:
            rest.append(o.text)
            continue
        if o.sweep is not None:
            raise ConfigError(f"{o.key}: one value, not a list of values")
        values[o.key] = o.value
    for key in ("ckpt", "dets", "ann", "image_dir"):
        values.setdefault(key, None)
        text(null=True)(key, values[key])
    text()("out_dir", values["out_dir"])
    integer(1, 100_000)("images", values["images"])
    number(0, 1)("score", values["score"])
    integer(1, 100_000)("top", values["top"])
    if values["classes"] is not None:
        classes = values["classes"]
        list_of(text(), nonempty=True)("classes", [str(c) for c in classes]
                                       if isinstance(classes, list) else classes)
    if not (values["ckpt"] and not values["dets"]) and not (
            values["dets"] and values["ann"] and values["image_dir"] and not values["ckpt"]):
        raise ConfigError("acsl show needs ckpt=HEAD/checkpoint.pt, or dets=RESULTS.json "
                          "ann=ANN.json image_dir=FOLDER")
    classes = tuple(values["classes"]) if values["classes"] is not None else None
    return ShowPlan(values["ckpt"], values["dets"], values["ann"], values["image_dir"],
                    str(values["out_dir"]), values["images"], float(values["score"]),
                    values["top"], classes, tuple(rest))
