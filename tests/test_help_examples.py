"""Every example in every ``acsl <command> --help`` runs.

The examples are read from the rendered help (the paragraph that starts ``Example:`` or
``Examples:``, commands separated by `` ; ``, a label such as ``on a cluster:`` before a
command, ``[...]`` around an optional argument, which is given). They run in this order,
in one folder with one ``output_root``, on the tiny benchmark (``TINY``: the smoke schedule
on 8 classes) cut to 2 iterations per stage and 8 val images (``SMALLEST``), so that the
stage-1 cache is shared and the module stays short. Placeholders (``RUN/heads/HEAD``,
``results.json``, ``val.json``, ``val2017``, ``NAME-sweep``, ``OTHER``) become what the
earlier examples made. An example that needs what a clone of the project does not have
(LVIS, an Open Images release, a Slurm partition named gpu) is listed in ``NEEDS`` and
must end in one line ``error: ...`` (exit 2) naming it; every other one must succeed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acsl_cli.cli import app
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
SMALLEST = [*TINY, "schedule.max_iters=2", "schedule.eval_max_images=8"]
COMMANDS = (["train"], ["sweep"], ["eval"], ["show"], ["data", "stats"], ["report"])

#: example -> what it needs that a clone lacks, and a word its one error line must contain
NEEDS = {
    "acsl sweep seed=0,1,2 launcher=slurm launcher.partition=gpu": ("a Slurm cluster",
                                                                    "launcher"),
    "acsl eval dets=predictions.csv ann=RELEASE_DIR [train_ann=train-annotations-bbox.csv] "
    "[test.expand_hierarchy=true]": ("an Open Images release", "RELEASE_DIR"),
    "acsl data stats ann=lvis_v1_train.json sampler.t=0.001 out=stats.json": (
        "LVIS v1's annotations", "lvis_v1_train.json"),
    "acsl data stats dataset=lvis_v0.5 dataset.root=/data/lvis": ("LVIS v0.5", "/data/lvis"),
}


def help_examples(command: list[str]) -> list[str]:
    """The example commands of ``acsl <command> --help``, as one line each."""
    text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"}).output
    head = text.split("╭", 1)[0]  # the description, above the argument panels
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", head)]
    found = [p for p in paragraphs if re.match(r"Examples?: ", p)]
    assert len(found) == 1, f"acsl {' '.join(command)} --help: no Examples paragraph"
    parts = found[0].split(":", 1)[1].split(" ; ")
    out = []
    for part in parts:
        m = re.search(r"\bacsl .*", part)
        assert m, f"not a command: {part!r}"
        out.append(m[0].strip())
    return out


EXAMPLES = [e for c in COMMANDS for e in help_examples(c)]


def test_every_command_has_examples_and_the_needs_list_is_current():
    assert {tuple(e.split()[1:3]) if e.startswith("acsl data") else (e.split()[1],)
            for e in EXAMPLES} == {tuple(c) for c in COMMANDS}
    assert set(NEEDS) <= set(EXAMPLES), set(NEEDS) - set(EXAMPLES)


def _args(example: str, places: dict[str, str], root: Path) -> list[str]:
    """The example's arguments: optional ones given, placeholders replaced, and for the
    commands that train or read a dataset the smallest benchmark in ``root``."""
    words = shlex.split(example)[1:]
    args = []
    for w in words:
        w = w[1:-1] if w.startswith("[") and w.endswith("]") and "=" in w else w
        key, eq, value = w.partition("=")
        args.append(key + eq + places.get(value, value) if eq else places.get(w, w))
    if any(a.startswith("dataset=") for a in args):  # its own dataset: not the tiny one
        args.append(f"output_root={root}")
    elif words[0] in ("train", "sweep") or words[:2] == ["data", "stats"]:
        args += [*SMALLEST, f"output_root={root}"]
    elif words[0] in ("eval", "show") and any(a.startswith("ckpt=") for a in args):
        args.append(f"output_root={root}")
    return args


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Every example, run in order in one folder: example -> (exit code, output)."""
    work = tmp_path_factory.mktemp("examples")
    root = work / "outputs"
    places: dict[str, str] = {}
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # relative out= paths land here
        mp.setenv("PYTHONPATH", str(ROOT))  # launcher=local's job processes
        for example in EXAMPLES:
            if example.startswith("acsl report"):
                # the report's second folder: a bce run on the same (cached) stage 1
                res = CliRunner().invoke(app, ["train", "loss=bce", "seed=1", *SMALLEST,
                                               f"output_root={root}", "run_name=other"])
                assert res.exit_code == 0, res.output
                places["outputs/runs/OTHER"] = str(root / "runs" / "other")
            res = CliRunner().invoke(app, _args(example, places, root),
                                     env={"COLUMNS": "200"})
            results[example] = (res.exit_code, res.output)
            if example.startswith("acsl train") and res.exit_code == 0:
                run = next(p for p in (root / "runs").iterdir() if not p.name.startswith("."))
                head = next((run / "heads").iterdir())
                data = next((root / "cache" / "data").glob("synthetic-*"))
                places.update({
                    "outputs/runs/RUN/heads/HEAD/checkpoint.pt": str(head / "checkpoint.pt"),
                    "results.json": str(head / "results.json"),
                    "val.json": str(data / "val.json"), "train.json": str(data / "train.json"),
                    "val2017": str(data)})
            if example.startswith("acsl sweep") and res.exit_code == 0:
                sweep = sorted((root / "runs").glob("*-sweep"))
                places.setdefault("outputs/runs/NAME-sweep", str(sweep[0]))
    return results


@pytest.mark.parametrize("example", EXAMPLES)
def test_help_example_runs(ran, example):
    code, output = ran[example]
    if example in NEEDS:
        what, word = NEEDS[example]
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        assert code == 2 and lines[-1].startswith("error: ") and word in lines[-1], (
            f"{example} needs {what}: one error line expected, got {code}: {output[-2000:]}")
        assert sum(ln.startswith("error: ") for ln in lines) == 1, output
    else:
        assert code == 0, f"{example}: exit {code}\n{output[-3000:]}"

