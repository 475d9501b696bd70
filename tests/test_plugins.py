"""A user's own loss without a fork: a package installed with pip that declares the
``acsl.losses`` entry point, and ``plugins=`` for a module that is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: the smallest run that still trains both stages and evaluates (~10 s on 2 cores)
SHRUNK = ["schedule=smoke", "progress=false", "dataset.num_classes=4",
          "dataset.max_images_per_class=6", "dataset.val_instances_per_class=1",
          "schedule.max_iters=2", "schedule.batch_size=2", "schedule.eval_max_images=4",
          "dataset.min_size=64", "dataset.max_size=64"]

#: A focal softmax cross-entropy, -(1 - p_y)^gamma log p_y averaged over RoIs; every call
#: appends its value to $FOCAL_LOG so the test sees that this loss trained the head.
FOCAL = '''
"""Focal softmax cross-entropy (a user's loss)."""
import os

import torch.nn.functional as F

from acsl_cli.losses import ClassificationLoss


class FocalCE(ClassificationLoss):
    """Focal softmax cross-entropy (a user's loss)."""

    def __init__(self, num_classes=None, gamma: float = 2.0):
        super().__init__(num_classes)
        self.gamma = gamma

    def forward(self, logits, labels):
        logp = F.log_softmax(logits.float(), dim=1).gather(1, labels[:, None])[:, 0]
        value = (-(1 - logp.exp()) ** self.gamma * logp).mean()
        if os.environ.get("FOCAL_LOG"):
            with open(os.environ["FOCAL_LOG"], "a") as f:
                f.write(f"{self.gamma} {value.item()}\\n")
        return value

    def scores(self, logits):
        return F.softmax(logits.float(), dim=1)[:, 1:]
'''


def _package(where: Path, name: str, entry: str, module: str) -> Path:
    """A source tree of a plugin package with one ``acsl.losses`` entry point."""
    src = where / name
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("")
    (src / name / "losses.py").write_text(module)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{name.replace('_', '-')}"
        version = "0.1"
        [project.entry-points."acsl.losses"]
        {entry}
        [tool.setuptools]
        packages = ["{name}"]
        """))
    return src


def _pip_install(src: Path, site: Path) -> None:
    """pip, offline, with the venv's setuptools, into a folder of its own (not the venv)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                    "--no-build-isolation", "--target", str(site), str(src)],
                   check=True, capture_output=True, timeout=300)


def _acsl(args: list[str], cwd: Path, site: Path, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(site), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path, **env})


def test_installed_plugin_loss_trains_a_smoke_head(tmp_path):
    site = tmp_path / "site"
    _pip_install(_package(tmp_path, "focal_pkg", 'focal_ce = "focal_pkg.losses:FocalCE"',
                          FOCAL), site)
    log, out = tmp_path / "focal.log", tmp_path / "m.json"

    listed = _acsl(["losses"], tmp_path, site)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("focal_ce"))
    assert "entry point focal_ce = focal_pkg.losses:FocalCE" in line
    assert "Focal softmax cross-entropy" in line

    proc = _acsl(["train", *SHRUNK, "loss=focal_ce", "loss.gamma=1.5", f"out={out}",
                  f"output_root={tmp_path / 'o'}"], tmp_path, site, FOCAL_LOG=str(log))
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())) >= {"AP", "APr"}
    calls = [ln.split() for ln in log.read_text().splitlines()]
    assert len(calls) >= 2 and {g for g, _ in calls} == {"1.5"}  # stage 2 used it
    assert all(0 <= float(v) < 10 for _, v in calls)
    run = next((tmp_path / "o" / "runs").iterdir())
    saved = (run / "config.yaml").read_text()
    assert "name: focal_ce" in saved and "gamma: 1.5" in saved


def _site_by_hand(site: Path, dist: str, entry_points: str) -> None:
    """A dist-info written by hand: what pip leaves, enough for importlib.metadata."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[acsl.losses]\n{entry_points}\n")


def test_a_broken_plugin_is_one_line_naming_it(tmp_path):
    site = tmp_path / "site"
    (site / "broken_pkg").mkdir(parents=True)
    (site / "broken_pkg" / "__init__.py").write_text("")
    (site / "broken_pkg" / "losses.py").write_text("import torch\nraise RuntimeError('oops')\n")
    _site_by_hand(site, "broken_pkg", "broken = broken_pkg.losses:Broken")
    proc = _acsl(["train", "loss=broken", "progress=false"], tmp_path, site)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: plugin 'broken' (acsl.losses entry point broken_pkg.losses:Broken) cannot "
        "be loaded: RuntimeError: oops")
    # a built-in loss never loads the plugins: the broken one does not stand in the way
    dry = _acsl(["train", "--dry-run", "loss=bce"], tmp_path, site)
    assert dry.returncode == 0, dry.stderr


@pytest.fixture
def clean_registry():
    """The plugin loss registered in this process is gone again after the test."""
    from acsl_cli.losses import plugins, registry

    before = dict(registry._LOSSES)
    imported, origins = set(plugins._imported), dict(plugins._ORIGIN)
    yield
    registry._LOSSES.clear()
    registry._LOSSES.update(before)
    plugins._imported.clear()
    plugins._imported.update(imported)
    plugins._ORIGIN.clear()
    plugins._ORIGIN.update(origins)


def test_plugins_option_imports_a_module_that_is_not_installed(tmp_path, monkeypatch,
                                                               clean_registry):
    from acsl_cli.config import load_settings
    from acsl_cli.errors import ConfigError
    from acsl_cli.losses import build_loss
    from acsl_cli.plan import check_loss

    module = FOCAL.replace("class FocalCE", "from acsl_cli.losses import register_loss\n\n\n"
                           "@register_loss('my_focal')\nclass FocalCE")
    (tmp_path / "my_losses.py").write_text(module)
    monkeypatch.chdir(tmp_path)  # not on sys.path: found in the current folder
    with pytest.raises(ConfigError, match="unknown loss 'my_focal'"):
        load_settings(["loss=my_focal"])
    s = load_settings(["plugins=my_losses", "loss=my_focal", "loss.gamma=0"])
    assert s.plugins == ("my_losses",) and s.loss.name == "my_focal"
    assert dict(s.loss.params) == {"gamma": 0}
    check_loss(s.loss)
    # a loss without a yaml of its own still has its keys checked
    with pytest.raises(ConfigError, match="gama"):
        load_settings(["plugins=my_losses", "loss=my_focal", "loss.gama=1"])
    # gamma = 0 is plain softmax CE: -log p_y, by hand on two RoIs
    loss = build_loss("my_focal", None, num_classes=2, gamma=0.0)
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    lse = torch.logsumexp(logits, dim=1)
    expected = ((lse[0] - 2.0) + (lse[1] - 1.0)) / 2
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # a module name, not a path
    with pytest.raises(ConfigError, match=r"plugins\[0\]='./my_losses.py': not a module name"):
        load_settings(["plugins=[./my_losses.py]"])


def test_a_checkpoints_saved_plugins_are_not_imported_on_their_own(tmp_path, monkeypatch):
    """``eval ckpt=`` composes on the checkpoint's saved config, an untrusted file: a module
    it names is not imported (its code would run) unless the command names it too."""
    from omegaconf import OmegaConf

    from acsl_cli.config import load_config
    from acsl_cli.errors import ConfigError

    marker = tmp_path / "ran"
    (tmp_path / "saved_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)  # where a plugin module would be found
    saved = load_config([])
    saved.plugins = ["saved_plugin"]
    base = OmegaConf.create(OmegaConf.to_container(saved))
    with pytest.raises(ConfigError, match=r"add plugins=\[saved_plugin\] to import it"):
        load_config([], base=base)
    assert not marker.exists()
    load_config(["plugins=[saved_plugin]"], base=base)  # named by the command: imported
    assert marker.exists()
    sys.modules.pop("saved_plugin", None)
