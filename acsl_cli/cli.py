"""The ``acsl`` command: thin wrappers that compose config and call ``acsl_cli.experiment``."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from acsl_cli import experiment
from acsl_cli.engine.distributed import is_main
from acsl_cli.errors import AcslError, ConfigError
from acsl_cli.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train and compare long-tail detection losses (ACSL, BCE, EQL, BAGS, ...) "
    "on torchvision Faster R-CNN. Arguments are Hydra overrides: key=value.",
    pretty_exceptions_enable=False,
)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. loss=acsl xi=0.7 seed=1")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input -> one line ``error: ...`` on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AcslError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _kv(overrides: list[str] | None, key: str) -> str | None:
    for o in overrides or []:
        if o.startswith(f"{key}="):
            return o.split("=", 1)[1]
    return None


@app.command(context_settings=EXTRA)
@user_errors
def train(overrides: list[str] = OVERRIDES) -> None:
    """Stage 1 (or reuse) + stage 2 with the chosen loss + LVIS evaluation."""
    result = experiment.run_train(overrides or [])
    if not is_main():
        return
    experiment.print_metrics(result.metrics, "LVIS bbox metrics (%)")
    s1 = "reused" if result.stage1_reused else "trained"
    console.print(f"stage 1 {s1}: {result.stage1_dir}")
    console.print(f"run directory: {result.run_dir}  ({result.seconds:.0f} s)")


@app.command(context_settings=EXTRA)
@user_errors
def sweep(overrides: list[str] = OVERRIDES) -> None:
    """Comma lists: loss/xi values share one stage-2 pass, other keys (seed=0,1,2) are runs."""
    result = experiment.run_sweep(overrides or [])
    if not is_main():
        return
    experiment.print_metrics(result.mean, f"mean over {result.num_runs} run(s) (%)")
    console.print(f"sweep directory: {result.folder}")


@app.command(name="eval", context_settings=EXTRA)
@user_errors
def eval_(overrides: list[str] = OVERRIDES) -> None:
    """Evaluate ckpt=PATH (with the config saved beside it) or dets=RESULTS.json ann=ANN.json."""
    ckpt, dets, ann, out = (_kv(overrides, k) for k in ("ckpt", "dets", "ann", "out"))
    if ckpt and not dets:
        metrics = experiment.run_eval_checkpoint(ckpt, overrides or [])
        title = Path(ckpt).parent.name
    elif dets and ann and not ckpt:
        metrics = experiment.run_eval_results(dets, ann)
        title = Path(dets).name
    else:
        raise ConfigError("acsl eval needs ckpt=PATH, or dets=RESULTS.json ann=ANN.json")
    if not is_main():
        return
    experiment.print_metrics({title: metrics}, "LVIS bbox metrics (%)")
    if out:
        from acsl_cli.reporting.tables import write_json

        write_json(Path(out), metrics)
        console.print(f"metrics written to {out}")


@app.command()
def losses() -> None:
    """List the registered losses."""
    from acsl_cli.losses import available_losses

    for name in available_losses():
        typer.echo(name)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
