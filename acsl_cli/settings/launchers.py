"""The launcher sections (``launcher=``): where ``acsl sweep`` runs its jobs, one settings
class per launcher with its own keys (``declare.kinds``); another launcher's key is
refused. A launcher cannot change a result: nothing here enters a key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from acsl_cli.errors import ConfigError
from acsl_cli.settings.declare import kind, setting
from acsl_cli.settings.rules import Rule, boolean, choice_in, integer, number, text

#: ``launcher=NAME`` -> its settings class: a key of another launcher is refused
LAUNCHER_KINDS: dict[str, type] = {}


def _sbatch_options() -> Rule:
    """``launcher.additional``: sbatch option name -> one value on one line
    (``{mail-type: END}``; ``true`` for a flag such as ``exclusive``)."""
    import re

    name_ok = re.compile(r"[A-Za-z][A-Za-z0-9_-]*").fullmatch

    def check(key: str, v: Any) -> None:
        if v is None:
            return
        if not isinstance(v, Mapping):
            shown = repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."
            raise ConfigError(f"{key}={shown}: must be a mapping of sbatch options to "
                              "values, e.g. {mail-type:END}")
        for name, value in v.items():
            if not isinstance(name, str) or not name_ok(name):
                raise ConfigError(f"{key}: {name!r} is not an sbatch option name")
            if isinstance(value, bool) and not value or not isinstance(
                    value, (str, int, float)) or any(c in str(value) for c in "\0\n\r"):
                raise ConfigError(f"{key}.{name}={str(value)[:60]!r}: must be one value on "
                                  "one line (a string or number; true for a flag)")

    return Rule(check, lambda v: {"comment": "acsl"} if v != {"comment": "acsl"} else None)


class LauncherSettings:
    """Where ``acsl sweep`` runs its jobs (``conf/launcher/``); each launcher's class
    declares its own keys. A launcher cannot change a result, so nothing here enters a
    cache key or tells runs apart (``outcome=False``)."""

    name: str
    wait: bool


def _launcher(name: str) -> Any:
    return setting(name, choice_in(LAUNCHER_KINDS), outcome=False)


@dataclass(frozen=True)
class _Waits(LauncherSettings):
    #: wait for the jobs, then write the sweep's tables; false: submit and return
    wait: bool = setting(True, boolean, outcome=False)


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class InprocessLauncherSettings(_Waits):
    """Every run in this process, one after another (always waits)."""

    name: str = _launcher("inprocess")


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class LocalLauncherSettings(_Waits):
    name: str = _launcher("local")
    #: jobs at once, and GPUs per job (its own CUDA_VISIBLE_DEVICES; > 1: torchrun)
    max_parallel: int = setting(1, integer(1, 4096), outcome=False)
    gpus_per_run: int = setting(0, integer(0, 4096), outcome=False)


@kind(LAUNCHER_KINDS)
@dataclass(frozen=True)
class SlurmLauncherSettings(_Waits):
    """sbatch's --partition, --account, --qos, --nodes, ... through submitit."""

    name: str = _launcher("slurm")
    partition: str | None = setting(None, text(null=True), outcome=False)
    account: str | None = setting(None, text(null=True), outcome=False)
    qos: str | None = setting(None, text(null=True), outcome=False)
    nodes: int = setting(1, integer(1, 100_000), outcome=False)
    gpus_per_node: int = setting(0, integer(0, 1024), outcome=False)
    cpus_per_task: int = setting(1, integer(1, 4096), outcome=False)
    mem_gb: float | None = setting(None, number(0, 1e7, lo_open=True, null=True),
                                   outcome=False)
    time_min: int = setting(60, integer(1, 10**7), outcome=False)
    constraint: str | None = setting(None, text(null=True), outcome=False)
    #: any other sbatch option, e.g. {mail-type: END}
    additional: Mapping[str, Any] | None = setting(None, _sbatch_options(), outcome=False)
