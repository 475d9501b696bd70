"""A normal (non-editable) install works: the wheel carries the code and the config groups,
and the installed ``acsl`` runs from any folder without the checkout. Also: the light
commands do not import torch.

The wheel is built offline from a copy of the checkout (``pip wheel --no-build-isolation
--no-index``) and installed into a fresh venv in a tmp folder. That venv sees this venv's
dependencies (torch, ...) through a ``deps.pth`` line naming this venv's site-packages: a
folder added by a .pth line is not a site dir, so the .pth files in it, among them the
editable install's finder, are not run, and ``import acsl_cli`` can only find the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import acsl_cli

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "acsl_cli", "conf")
TORCH_FREE = (["--help"], ["losses"], ["--version"])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ACSL_CONF", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (no build/ left in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        elif path.is_file():
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", ".", "-w", dist], cwd=src)
    (whl,) = dist.glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel, with this venv's dependencies visible."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    python = root / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "deps.pth").write_text("".join(f"{p}\n" for p in ours))
    # pip itself comes from this venv through deps.pth; -I: this venv's acsl-cli (the
    # editable checkout) must not count as already installed.
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-I", "-q", wheel],
         cwd=root.parent)
    return root


def test_wheel_carries_config_groups_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "acsl_cli/conf/config.yaml" in names
    for group in ("loss", "dataset", "backbone", "schedule"):
        assert any(n.startswith(f"acsl_cli/conf/{group}/") and n.endswith(".yaml")
                   for n in names), group
    yamls = {f"acsl_cli/conf/{p.relative_to(ROOT / 'conf').as_posix()}"
             for p in (ROOT / "conf").rglob("*.yaml")}
    assert not yamls - names, f"conf/ files missing from the wheel: {sorted(yamls - names)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "acsl_cli").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, ("modules missing from the wheel (add their package to "
                         f"[tool.setuptools] packages in pyproject.toml): {missing}")
    assert "acsl_cli/reporting/report_template.html" in names  # report.html's page
    assert wheel.name.startswith(f"acsl_cli-{acsl_cli.__version__}-"), wheel.name


def test_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    proc = _run([venv / "bin" / "python", "-c",
                 "import acsl_cli, acsl_cli.config as c; print(acsl_cli.__file__);"
                 " print(c.config_dir())"], cwd=tmp_path)
    module, conf = (Path(line) for line in proc.stdout.split())
    assert module.is_relative_to(venv), module
    assert conf == module.parent / "conf", conf
    assert not module.is_relative_to(ROOT)


def test_installed_version(venv, tmp_path):
    proc = _run([venv / "bin" / "acsl", "--version"], cwd=tmp_path, timeout=60)
    assert proc.stdout.split() == ["acsl", acsl_cli.__version__], proc.stdout


def test_installed_acsl_trains_from_any_folder(venv, tmp_path):
    out = tmp_path / "outputs"
    _run([venv / "bin" / "acsl", "train", "schedule=smoke", "progress=false",
          f"output_root={out}"], cwd=tmp_path, timeout=600)
    runs = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1, runs
    assert (runs[0] / "metrics.json").is_file()


@pytest.mark.parametrize("args", TORCH_FREE, ids=" ".join)
def test_light_commands_do_not_import_torch(args, tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from acsl_cli.cli import app\n"
        "result = CliRunner().invoke(app, sys.argv[1:])\n"
        "assert result.exit_code == 0, (result.exit_code, result.output)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    _run([sys.executable, "-c", code, *args], cwd=tmp_path, timeout=120)
