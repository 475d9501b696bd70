"""Where a run came from: the command line, versions, the git commit, device, world size."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from acsl_cli import __version__
from acsl_cli.engine import distributed as dist

PACKAGES = ("torch", "torchvision", "numpy", "hydra-core", "omegaconf")
_command: str | None = None  # set in a launcher's job: the user's command, not the worker's


def command_line() -> str | None:
    """The command this run came from: the ``acsl`` command line (in a launcher's job, the
    one that launched it)."""
    if _command is not None:
        return _command
    return shlex.join(["acsl", *sys.argv[1:]]) if sys.argv else None


def set_command(command: str | None) -> None:
    """In a launcher's job: record the launching command as every run's ``command``."""
    global _command
    _command = command


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes); None when installed
    from a wheel or git is missing."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], text=True, capture_output=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def provenance(device: str) -> dict[str, Any]:
    versions = {"acsl": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    name = None
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
    return {
        "command": command_line(),
        "versions": versions,
        "git_commit": git_commit(),
        "device": device if name is None else f"{device} ({name})",
        "world_size": dist.world_size(),
        "host": platform.node(),
    }
