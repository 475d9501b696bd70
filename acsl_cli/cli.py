"""The ``acsl`` command: thin wrappers that plan from overrides and call the pipeline.

Heavy modules (torch, the pipeline) are imported inside the commands that need them, so
``acsl --help``, ``acsl --version``, ``acsl losses`` and ``acsl eval dets=...`` start fast.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from acsl_cli import __version__
from acsl_cli.conf_groups import groups_help
from acsl_cli.errors import AcslError, Terminated, raise_terminated

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train and compare long-tail detection losses (ACSL, BCE, EQL, BAGS, ...) "
    "on torchvision Faster R-CNN. Arguments are Hydra overrides: key=value.",
    pretty_exceptions_enable=False,
)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. loss=acsl xi=0.7 seed=1")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the resolved settings of every run "
                       "and head, the stage-1 entries cached or to train, and the disk "
                       "needed; write nothing.")
GROUPS_EPILOG = ("Config groups (GROUP=OPTION): " + groups_help() + ". Every key and its "
                 "value: acsl train --dry-run KEY=VALUE...; their rules: README, Config groups.")
EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


def one_line(error: BaseException) -> str:
    """The message of a user error as one line, also when a DataLoader worker raised it
    (torch then wraps the worker's traceback into the message)."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return error.__class__.__name__
    last = lines[-1]
    if len(lines) > 1 and ": " in last and "Error" in last.split(": ", 1)[0]:
        return last.split(": ", 1)[1]
    return " ".join(lines)


def _stopped(e: BaseException) -> str:
    """What an interrupt left: its own message (e.g. what became of a sweep's jobs)."""
    return " ".join(str(e).split()) or "nothing half-written was left behind"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input -> one line ``error: ...`` and exit 2; a diverged run -> exit 1; Ctrl-C
    -> 130 and SIGTERM -> 143, each with one line and nothing half-written left."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
        try:
            return fn(*args, **kwargs)
        except AcslError as e:
            typer.echo(f"error: {one_line(e)}", err=True)
            raise typer.Exit(getattr(e, "exit_code", EXIT_USER_ERROR)) from None
        except KeyboardInterrupt as e:
            typer.echo(f"interrupted: {_stopped(e)}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated as e:
            typer.echo(f"terminated (SIGTERM): {_stopped(e)}", err=True)
            raise typer.Exit(EXIT_TERMINATED) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"acsl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train and compare long-tail detection losses on torchvision Faster R-CNN."""


def _print_table(rows: dict, title: str, note: str = "") -> None:
    from acsl_cli.pipeline.report import metrics_table
    from acsl_cli.progress import console

    console.print(metrics_table(rows, title, note))


@app.command(context_settings=EXTRA, epilog=GROUPS_EPILOG)
@user_errors
def train(overrides: list[str] = OVERRIDES, dry_run: bool = DRY_RUN) -> None:
    """Stage 1 (or reuse) + stage 2 with the chosen loss(es) + LVIS evaluation.

    Example: acsl train loss=acsl xi=0.7 seed=1
    """
    from acsl_cli.pipeline.report import is_main
    from acsl_cli.pipeline.train import run_train
    from acsl_cli.progress import console

    if dry_run:
        from acsl_cli.pipeline.dry_run import describe_train
        from acsl_cli.plan import plan_train

        typer.echo(describe_train(plan_train(overrides or [])))
        return
    result = run_train(overrides or [])
    if not is_main():
        return
    _print_table(result.metrics, "bbox metrics (%)", result.groups_note)
    s1 = "reused" if result.stage1_reused else "trained"
    console.print(f"stage 1 {s1}: {result.stage1_dir}")
    console.print(f"run directory: {result.run_dir}  ({result.seconds:.0f} s)")


@app.command(context_settings=EXTRA, epilog=GROUPS_EPILOG)
@user_errors
def sweep(overrides: list[str] = OVERRIDES, dry_run: bool = DRY_RUN) -> None:
    """Comma lists: loss/xi values share one stage-2 pass, other keys (seed=0,1,2) are runs.

    Examples: acsl sweep seed=0,1,2 xi=0.3,0.5,0.7 ; two runs at a time on this machine:
    acsl sweep seed=0,1,2 launcher=local launcher.max_parallel=2 ; on a cluster: acsl sweep
    seed=0,1,2 launcher=slurm launcher.partition=gpu
    """
    from acsl_cli.pipeline.report import is_main
    from acsl_cli.pipeline.sweep import run_sweep
    from acsl_cli.progress import console

    if dry_run:
        from acsl_cli.pipeline.dry_run import describe_sweep
        from acsl_cli.plan import plan_sweep

        typer.echo(describe_sweep(plan_sweep(overrides or [])))
        return
    result = run_sweep(overrides or [])
    if not is_main():
        return
    if result.folder is None:
        console.print(f"job(s) queued or running: {' '.join(result.jobs)}; run the "
                      "same command again to collect the sweep")
        return
    _print_table(result.mean, f"mean over {result.num_runs} run(s) (%)")
    console.print(f"sweep directory: {result.folder}")


@app.command(name="eval", context_settings=EXTRA)
@user_errors
def eval_(overrides: list[str] = OVERRIDES, dry_run: bool = DRY_RUN) -> None:
    """Evaluate ckpt=PATH (with the config saved beside it) or dets=RESULTS.json ann=ANN.json.

    Examples: acsl eval ckpt=outputs/runs/RUN/heads/HEAD/checkpoint.pt dataset.seed=0 ;
    acsl eval dets=results.json ann=val.json \\[train_ann=train.json] out=m.json ;
    Open Images: acsl eval dets=predictions.csv ann=RELEASE_DIR
    \\[train_ann=train-annotations-bbox.csv] \\[test.expand_hierarchy=true]
    """
    from acsl_cli.plan import plan_eval
    from acsl_cli.progress import console

    plan = plan_eval(overrides or [])
    if dry_run:
        from acsl_cli.pipeline.dry_run import describe_eval

        typer.echo(describe_eval(plan))
        return
    if plan.out:
        from acsl_cli.pipeline.rundir import check_out_file

        check_out_file(Path(plan.out))
    note, calibration = "", None
    if plan.ckpt:
        from acsl_cli.pipeline.evaluate import eval_checkpoint
        from acsl_cli.pipeline.report import is_main

        result = eval_checkpoint(plan)
        by_protocol, calibration = result.by_protocol, result.calibration
        title = Path(plan.ckpt).parent.name
        # "model", "model norcal gamma=0.5", ...: named by the checkpoint's folder
        rows = {title + k[len("model"):]: m for k, m in result.rows.items()}
        if not is_main():
            return
    else:
        from acsl_cli.evaluation.lvis_protocols import protocol_label
        from acsl_cli.pipeline.evaluate_file import run_eval_results

        by_protocol, note = run_eval_results(plan)
        title = Path(str(plan.dets)).name
        rows = {protocol_label(title, p): m for p, m in by_protocol.items()}
    _print_table(rows, "bbox metrics (%)", note)
    if plan.out:
        from acsl_cli.pipeline.preflight import write_out

        write_out(plan.out, by_protocol, None, calibration)
        console.print(f"metrics written to {plan.out}")


@app.command(context_settings=EXTRA)
@user_errors
def show(overrides: list[str] = OVERRIDES) -> None:
    """Draw ground truth and detections on val images, and rare classes' false positives.

    Green: true positive, red: false positive, white: ground truth found, yellow: ground
    truth missed (a legend below each picture). By default the 8 first images, detections
    scoring >= 0.3 and at most 10 per image (images=, score=, top=).

    Examples: acsl show ckpt=outputs/runs/RUN/heads/HEAD/checkpoint.pt out_dir=show images=8
    score=0.3 classes=\\[red_circle] ; acsl show dets=results.json ann=val.json
    image_dir=val2017 out_dir=show top=20
    """
    from acsl_cli.pipeline.show import run_show
    from acsl_cli.plan_show import plan_show
    from acsl_cli.progress import console

    written = run_show(plan_show(overrides or []))
    console.print(f"{len(written)} picture(s) written, e.g. {written[0] if written else '-'}")


@app.command()
@user_errors
def losses() -> None:
    """List the losses and presets that loss=NAME accepts (conf/loss/*.yaml)."""
    from acsl_cli.plan import loss_presets

    for name, about in loss_presets():
        typer.echo(f"{name:<16}{about}")


data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset's train split.")
app.add_typer(data_app, name="data")


@data_app.command(name="stats", context_settings=EXTRA)
@user_errors
def data_stats(overrides: list[str] = OVERRIDES) -> None:
    """Train-split sizes, r/c/f groups, categories, and the repeat-factor epoch size.

    Examples: acsl data stats ; acsl data stats ann=lvis_v1_train.json sampler.t=0.001
    out=stats.json ; acsl data stats dataset=lvis_v0.5 dataset.root=/data/lvis
    """
    from acsl_cli.pipeline.data_stats import run_data_stats
    from acsl_cli.pipeline.report import print_stats
    from acsl_cli.progress import console

    result = run_data_stats(overrides or [])
    print_stats(result.stats, result.title)
    if result.out:
        console.print(f"stats written to {result.out}")


@app.command(context_settings=EXTRA)
@user_errors
def report(args: list[str] = typer.Argument(
        None, help="run or sweep folders, then optional out_dir=DIR baseline=NAME "
                   "resamples=N bootstrap_seed=S"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Read and compare the runs, "
                                     "print the table; write nothing.")) -> None:
    """Compare saved runs and sweeps: mean ± std over seeds, deltas with 95 % intervals,
    Markdown/CSV/JSON, figures.

    Example: acsl report outputs/runs/NAME-sweep outputs/runs/OTHER out_dir=cmp baseline=bce
    """
    from acsl_cli.pipeline.report import run_report
    from acsl_cli.progress import console

    result = run_report(args or [], dry_run)
    console.print(result.table)
    for note in result.notes:
        console.print(note, soft_wrap=True, markup=False, highlight=False)
    if dry_run:
        console.print(f"dry run: the report would be written to {result.out}; nothing was "
                      "written")
        return
    console.print(f"report: {result.markdown}  ({result.figures} figure(s) in {result.out})")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
