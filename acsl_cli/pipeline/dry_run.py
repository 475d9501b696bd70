"""``--dry-run``: what a command would do, from the plan alone. Prints every run's and
head's resolved settings, which stage-1 entries are cached and which would be trained,
and the disk a run needs; it writes nothing (no output folder, no data, no cache). The
real command's checks before any work (preflight: a taken run_name, an output_root that
is a file, backbone weights, the out= file) run first, so a plan that would fail is not
printed as if it would run."""

from __future__ import annotations

from acsl_cli.engine import distributed as dist
from acsl_cli.layout import OutputLayout
from acsl_cli.pipeline.preflight import check_run, disk_needed
from acsl_cli.pipeline.rundir import check_out_file
from acsl_cli.pipeline.stage1_cache import FILES
from acsl_cli.plan import EvalPlan, RunPlan, SweepPlan
from acsl_cli.settings import stage1_key, yaml_text
from acsl_cli.settings.sections import STAGE1_LOSS


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _stage1(plan: RunPlan) -> str:
    s = plan.settings
    folder = OutputLayout.at(s.output_root).stage1(stage1_key(s, dist.world_size()))
    cached = all((folder / f).is_file() for f in FILES)
    loss = s.stage1_loss
    trained = "" if s.schedule.stage1.loss == STAGE1_LOSS else "loss " + " ".join(
        [loss.name, *(f"{k}={v}" for k, v in loss.as_dict().items() if k != "name")]) + ", "
    return f"{trained}{folder} ({'cached: reused' if cached else 'not cached: will be trained'})"


def describe_run(plan: RunPlan, title: str = "run") -> str:
    """One run: its settings (YAML), its heads' losses, its stage 1, its disk estimate."""
    s = plan.settings
    lines = [f"# {title}: {len(plan.heads)} head(s), seed {s.seed}",
             yaml_text({k: v for k, v in s.source.items() if k != "loss"}).rstrip()]
    for h in plan.heads:
        lines += [f"# head {h.id} (row '{h.label}')", yaml_text({"loss": h.loss.as_dict()})
                  .rstrip()]
    lines += [f"# stage 1: {_stage1(plan)}",
              f"# disk: about {_size(disk_needed(s, len(plan.heads)))} under {s.output_root}"]
    return "\n".join(lines)


def describe_train(plan: RunPlan) -> str:
    check_run(plan.settings, len(plan.heads), dry_run=True)
    return describe_run(plan) + "\n# dry run: nothing was written"


def describe_sweep(plan: SweepPlan) -> str:
    for run in plan.runs:
        check_run(run.settings, len(run.heads), dry_run=True)
    parts = [describe_run(run, f"run {i} ({setting or 'as given'})")
             for i, (run, setting) in enumerate(zip(plan.runs, plan.settings, strict=True))]
    keys = {_stage1(run) for run in plan.runs}
    heads = sum(len(r.heads) for r in plan.runs)
    parts.append(f"# sweep: {len(plan.runs)} run(s) x heads = {heads} head(s); "
                 f"{len(keys)} distinct stage-1 entr{'y' if len(keys) == 1 else 'ies'}\n"
                 "# dry run: nothing was written")
    return "\n".join(parts)


def describe_eval(plan: EvalPlan) -> str:
    """What ``eval`` would score: a checkpoint's saved settings with the overrides (and its
    loss, which scores), or a results file against its annotations."""
    if plan.out:
        from pathlib import Path

        check_out_file(Path(plan.out))
    if plan.ckpt:
        from acsl_cli.engine.checkpoint import load_checkpoint
        from acsl_cli.plan import checkpoint_settings

        settings, loss = checkpoint_settings(plan, load_checkpoint(plan.ckpt))
        lines = [f"# evaluate the checkpoint {plan.ckpt}",
                 yaml_text({k: v for k, v in settings.source.items() if k != "loss"}).rstrip(),
                 yaml_text({"loss": loss.as_dict()}).rstrip()]
    else:
        lines = [f"# score {plan.dets} against {plan.ann}"]
        if plan.settings is not None:
            lines.append(yaml_text({"test": dict(plan.settings.source.get("test") or {})})
                         .rstrip())
    if plan.overrides:
        lines.append("# overrides: " + " ".join(plan.overrides))
    if plan.out:
        lines.append(f"# metrics would be written to {plan.out}")
    return "\n".join(lines + ["# dry run: nothing was written"])
