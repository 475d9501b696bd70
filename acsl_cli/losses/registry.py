"""Name -> loss class registry, keyed by the config name (``loss=NAME``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, LossContext

_LOSSES: dict[str, type[ClassificationLoss]] = {}
#: called (once each, in order) when a name is not registered: ``losses.plugins`` adds the
#: installed plugins' loader here, so the registry never imports the plugin machinery
ON_UNKNOWN: list[Callable[[], None]] = []
T = TypeVar("T", bound=type[ClassificationLoss])


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: make a loss selectable as ``loss=name``."""

    def wrap(cls: T) -> T:
        if name in _LOSSES:
            raise RuntimeError(f"loss '{name}' registered twice")
        cls.name = name
        _LOSSES[name] = cls
        return cls

    return wrap


def available_losses() -> list[str]:
    return sorted(_LOSSES)


def loss_class(name: str) -> type[ClassificationLoss]:
    """The class registered as ``name``; an unknown name first loads the installed
    plugins (entry-point group ``acsl.losses``, once)."""
    for hook in ON_UNKNOWN if name not in _LOSSES else ():
        hook()
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss '{name}' (choose from {', '.join(available_losses())})")
    return _LOSSES[name]


def build_loss(name: str, context: LossContext | None = None, **params: Any
               ) -> ClassificationLoss:
    """Build the loss registered as ``name`` with keyword ``params``.

    With a ``context``, the loss also gets the number of classes, the statistics it
    declares in ``needs`` and the seed if it is ``seeded`` (explicit ``params`` win); a
    ``multi_label`` loss also trains the context's class hierarchy (``ancestors``).
    Unknown parameters are an error rather than silently ignored, so a typo in a
    config never changes an experiment without notice.
    """
    cls = loss_class(name)
    if context is not None:
        params = {**context.kwargs_for(cls), **params}
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"loss '{name}' has no parameter(s) {', '.join(unknown)}")
    loss = cls(**params)
    if context is not None and context.ancestors is not None and cls.multi_label:
        loss.use_hierarchy(context.ancestors)
    return loss
