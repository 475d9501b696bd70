"""The check behind every "bad setting is one line before any work" test of ``acsl train``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from acsl_cli.cli import app


def assert_train_refuses(args: list[str], expect: str, tmp_path: Path) -> None:
    """``acsl train ARGS`` exits 2 with one ``error: ...`` line holding ``expect`` and
    writes nothing under its output root."""
    root = tmp_path / "outputs"
    res = CliRunner().invoke(app, ["train", *args, f"output_root={root}", "progress=false"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], res.output
    assert not root.exists()
