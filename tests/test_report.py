"""``acsl report``: saved runs and sweeps -> mean ± std over seeds, deltas, tables, figures.

Runs are made with the real pipeline (tiny settings); every number in the tables is checked
against the runs' own metrics.json, every figure is opened as a PNG.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from acsl_cli.data.groups import train_image_counts
from acsl_cli.errors import ConfigError, DataError
from acsl_cli.reporting.compare import compare
from acsl_cli.reporting.figures import draw_figures, sweep_figures
from acsl_cli.reporting.runs import STAGE1_ROW, load_runs, train_counts

TINY = ["dataset.num_classes=8", "dataset.max_images_per_class=12",
        "dataset.val_instances_per_class=2", "schedule=smoke", "progress=false"]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FIGURES = {"label_distribution.png", "per_category_ap.png", "xi_sweep.png", "group_ap.png",
           "deltas.png"}
PNG = b"\x89PNG\r\n\x1a\n"


def acsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acsl_cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A sweep (seeds 0, 1; bce + ACSL at two xi) and two lone bce runs (seeds 0, 1) that
    reuse its stage-1 cache."""
    work = tmp_path_factory.mktemp("report")
    root = work / "outputs"
    proc = acsl("sweep", *TINY, "seed=0,1", "loss=bce,acsl", "xi=0.3,0.7",
                f"output_root={root}", cwd=work)
    assert proc.returncode == 0, proc.stderr
    for seed, name in ((0, "a"), (1, "b")):
        proc = acsl("train", *TINY, "loss=bce", f"seed={seed}", f"run_name={name}",
                    f"output_root={root}", cwd=work)
        assert proc.returncode == 0, proc.stderr
    sweep = next((root / "runs").glob("*-sweep"))
    return {"work": work, "root": root, "sweep": sweep, "a": root / "runs" / "a",
            "b": root / "runs" / "b"}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _expected(runs: list[Path], baseline: str = STAGE1_ROW) -> dict[str, dict]:
    """Mean, sample std over seeds (a repeated seed averaged first) and delta, in [0, 1]."""
    seeds: dict[str, dict[int, list[dict]]] = {}
    for run in runs:
        seed = yaml.safe_load((run / "config.yaml").read_text())["seed"]
        for label, m in _metrics(run).items():
            seeds.setdefault(label, {}).setdefault(seed, []).append(m)
    out = {}
    for label, by_seed in seeds.items():
        row = {"mean": {}, "std": {}, "seeds": len(by_seed)}
        for k in METRICS:
            vals = [[m[k] for m in ms] for ms in by_seed.values()]
            if any(v is None for vs in vals for v in vs):
                row["mean"][k] = row["std"][k] = None
                continue
            per_seed = [sum(vs) / len(vs) for vs in vals]
            row["mean"][k] = statistics.fmean(per_seed)
            row["std"][k] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        out[label] = row
    for row in out.values():
        base = out[baseline]["mean"]
        row["delta"] = {k: None if row["mean"][k] is None or base[k] is None
                        else row["mean"][k] - base[k] for k in METRICS}
    return out


def _sweep_runs(sweep: Path) -> list[Path]:
    """runs.txt's paths are relative to the sweep folder."""
    return [(sweep / line.split("\t")[1]).resolve()
            for line in (sweep / "runs.txt").read_text().splitlines()]


def _check_tables(out: Path, expected: dict[str, dict], stdout: str) -> None:
    with open(out / "report.csv", newline="") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    data = {r["model"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    md = (out / "report.md").read_text()
    assert list(rows) == list(expected) == list(data)
    for label, exp in expected.items():
        assert len(rows[label]["seeds"].split()) == exp["seeds"]
        for part in ("mean", "std", "delta"):
            for k in METRICS:
                want, cell = exp[part][k], rows[label][f"{k}_{part}"]
                if want is None:
                    assert cell == "" and data[label][part][k] is None, (label, part, k)
                else:
                    assert float(cell) == pytest.approx(100 * want, abs=0.0051), (label, k)
                    assert data[label][part][k] == pytest.approx(100 * want, abs=0.0051)
        m, s = exp["mean"]["AP"], exp["std"]["AP"]
        shown = f"{100 * m:.2f} ± {100 * s:.2f}"
        assert shown in md and shown in stdout, (label, shown)
    assert "-" in md  # APl (and APf here) are undefined: shown as '-'


def _check_pngs(paths: list[Path]) -> None:
    import matplotlib.image

    for p in paths:
        raw = p.read_bytes()
        assert raw[:8] == PNG and len(raw) > 1000, p
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 300, p
        assert matplotlib.image.imread(p).shape[0] > 0


def test_report_on_a_sweep_matches_its_runs(made):
    out = made["work"] / "sweep_report"
    proc = acsl("report", str(made["sweep"]), f"out_dir={out}", cwd=made["work"])
    assert proc.returncode == 0, proc.stderr
    _check_tables(out, _expected(_sweep_runs(made["sweep"])), proc.stdout)
    figures = {p.name for p in out.glob("*.png")}
    # ACSL at xi 0.3 and 0.7: the xi figure and ACSL's suppression map are drawn
    assert figures == FIGURES | {"suppression.png"}
    _check_pngs(sorted(out.glob("*.png")))
    assert all(f"({name})" in (out / "report.md").read_text() for name in figures)


def test_report_on_two_train_runs_with_a_baseline(made):
    proc = acsl("report", str(made["a"]), str(made["b"]), "baseline=bce", cwd=made["work"])
    assert proc.returncode == 0, proc.stderr
    out = made["a"] / "report"  # default: <first folder>/report
    _check_tables(out, _expected([made["a"], made["b"]], "bce"), proc.stdout)
    # no ACSL head: no xi figure, no suppression map
    assert {p.name for p in out.glob("*.png")} == FIGURES - {"xi_sweep.png"}
    _check_pngs(sorted(out.glob("*.png")))


def test_a_seed_given_twice_counts_once(made):
    out = made["work"] / "twice"
    proc = acsl("report", str(made["sweep"]), str(made["a"]), f"out_dir={out}", cwd=made["work"])
    assert proc.returncode == 0, proc.stderr
    _check_tables(out, _expected([*_sweep_runs(made["sweep"]), made["a"]]), proc.stdout)


def test_runs_that_differ_beyond_the_seed_are_not_pooled(made, tmp_path):
    first, second = _sweep_runs(made["sweep"])
    other = tmp_path / "runs" / "lr"
    shutil.copytree(second, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["schedule"]["stage2"]["lr"] = 0.5
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    c = compare(load_runs([first, other]))
    names = [r.name for r in c.rows]
    assert "bce [schedule.stage2.lr=0.5]" in names and "bce [schedule.stage2.lr=0.02]" in names
    assert all(len(r.seeds) == 1 and r.std["AP"] in (0.0, None) for r in c.rows)
    # the default baseline is the stage-1 row of each variant
    assert all(r.delta["AP"] == 0.0 for r in c.rows if r.label == STAGE1_ROW)


def _rewrite_csv(path: Path, counts: dict[str, int] | None) -> list[dict]:
    """per_category_ap.csv without the train columns, or with them (per category id:
    id * counts[column]) in the order another writer might use, ``group`` for frequency."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = ("category_id", "name", "frequency", "group", "num_gt", "train_images",
            "train_instances")
    models = [k for k in rows[0] if k not in meta]
    header = ["category_id", "name", "frequency", "num_gt", *models]
    if counts is not None:
        header = ["category_id", "name", "group", "num_gt", *counts, *models]
    for r in rows:
        r["group"] = r.get("frequency", r.get("group"))
        for col, factor in (counts or {}).items():
            r[col] = int(r["category_id"]) * factor
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return rows


def test_train_counts_from_the_train_json_or_the_csv(made, tmp_path):
    train_json = next((made["root"] / "cache" / "data").glob("synthetic-*/train.json"))
    truth = train_image_counts(json.loads(train_json.read_text()))
    run = load_runs([made["a"]])[0]
    counts = train_counts(run)  # every category of train, not only those in the val subset
    assert counts.source == train_json and dict(counts.images) == truth
    assert len(truth) >= len(run.categories)
    # a copy elsewhere: the generated train.json found through the run's output root
    copy = tmp_path / "elsewhere" / "runs" / "a"
    shutil.copytree(made["a"], copy)
    path = copy / "per_category_ap.csv"
    _rewrite_csv(path, None)
    assert train_counts(load_runs([copy])[0]).source == train_json  # via config output_root
    assert dict(train_counts(load_runs([copy])[0]).images) == truth
    # without the json, the CSV's columns (anywhere in the header, 'group' for frequency)
    rows = _rewrite_csv(path, {"train_images": 7, "train_instances": 9})
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["output_root"] = str(tmp_path / "gone")
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    moved = load_runs([copy])[0]
    counts = train_counts(moved)
    assert counts.source == path
    assert dict(counts.images) == {int(r["category_id"]): int(r["category_id"]) * 7
                                   for r in rows}
    assert [sorted(c.ap) for c in moved.categories] == [sorted(c.ap) for c in run.categories]
    # neither the columns nor the json: the report is still written, the figure is skipped
    _rewrite_csv(path, None)
    with pytest.raises(DataError, match="config.yaml.*not found"):
        train_counts(load_runs([copy])[0])
    paths, notes = draw_figures(compare(load_runs([copy])), tmp_path / "out")
    assert "label_distribution.png" not in {p.name for p in paths}
    assert any("Label distribution not drawn" in n for n in notes)


def test_sweep_figures_draws_into_the_sweep_folder(made, tmp_path):
    folder = tmp_path / "runs" / made["sweep"].name  # a copy reads its own runs (issue 25)
    shutil.copytree(made["sweep"], folder)
    for run in _sweep_runs(made["sweep"]):
        shutil.copytree(run, folder.parent / run.name)
    paths = sweep_figures(folder)
    assert {p.name for p in paths} == FIGURES and all(p.parent == folder for p in paths)
    _check_pngs(paths)


def test_report_imports_no_torch(made, tmp_path):
    code = ("import sys; from acsl_cli.cli import main; "
            f"sys.argv = ['acsl', 'report', {str(made['sweep'])!r}, 'out_dir={tmp_path}']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.md").is_file()


def _broken_copy(made: dict, tmp_path: Path, text: str) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(made["a"], copy)
    (copy / "metrics.json").write_text(text)
    return copy


@pytest.mark.parametrize("case, expect", [
    ("empty folder", "neither a run folder"),
    ("missing folder", "no such folder"),
    ("broken json", "metrics.json: not valid JSON"),
    ("value out of range", "metrics.json: row 'bce': AP must be a number in [0, 1]"),
    ("runs.txt to nowhere", "runs.txt: line 1: no run folder"),
    ("unknown baseline", "baseline=nope: no such row"),
    ("unknown option", "outt: unknown option"),
])
def test_bad_input_is_one_line_exit_2(made, tmp_path, case, expect):
    args: list[str] = []
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty")]
    elif case == "missing folder":
        args = [str(tmp_path / "nothing")]
    elif case == "broken json":
        args = [str(_broken_copy(made, tmp_path, '{"bce": {"AP": 0.1,'))]
    elif case == "value out of range":
        m = _metrics(made["a"])
        m["bce"]["AP"] = 1.5
        args = [str(_broken_copy(made, tmp_path, json.dumps(m)))]
    elif case == "runs.txt to nowhere":
        sweep = tmp_path / "sweep"
        sweep.mkdir()
        (sweep / "runs.txt").write_text(f"seed=0\t{tmp_path / 'gone'}\n")
        args = [str(sweep)]
    elif case == "unknown baseline":
        args = [str(made["a"]), "baseline=nope"]
    elif case == "unknown option":
        args = [str(made["a"]), "outt=x"]
    proc = acsl("report", *args, f"out_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines
    if case not in ("unknown baseline", "unknown option"):
        assert str(tmp_path) in lines[0]  # names the path
    assert not (tmp_path / "out" / "report.md").exists()


def test_rarest_classes_table_is_the_mean_per_class_ap_of_the_runs(made):
    """Table 6 style: the rarest classes by train images, each model's AP (mean over the
    two bce runs) read back against their per_category_ap.csv files."""
    out = made["work"] / "tail_report"
    proc = acsl("report", str(made["a"]), str(made["b"]), f"out_dir={out}", cwd=made["work"])
    assert proc.returncode == 0, proc.stderr
    text = (out / "report.md").read_text()
    lines = [ln for ln in text.split("## Rarest classes")[1].split("##")[0].splitlines()
             if ln.startswith("| ")]
    header, table = lines[0], lines[1:]
    rows = {}
    for run in (made["a"], made["b"]):
        with (run / "per_category_ap.csv").open() as f:
            for r in csv.DictReader(f):
                rows.setdefault(r["name"], (int(r["train_images"]), []))[1].append(
                    float(r["bce"]))
    rarest = sorted(rows.items(), key=lambda kv: (kv[1][0], kv[0]))[:10]
    assert len(table) == len(rarest)
    for line, (name, (count, aps)) in zip(table, rarest, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name and int(cells[1]) == count
        column = [c.strip() for c in header.strip("|").split("|")].index("bce")
        assert float(cells[column]) == pytest.approx(100 * sum(aps) / len(aps), abs=0.006)


def _copy(run: Path, to: Path, config: dict, ap_shift: float = 0.0) -> Path:
    """A copy of a real run with config.yaml changed (``config``: top-level sections
    replaced) and every row's AP shifted, so that pooling it anywhere would show."""
    shutil.copytree(run, to)
    cfg = yaml.safe_load((to / "config.yaml").read_text())
    cfg.update(config)
    (to / "config.yaml").write_text(yaml.safe_dump(cfg))
    metrics = _metrics(to)
    for row in metrics.values():
        row["AP"] = min(1.0, row["AP"] + ap_shift)
    (to / "metrics.json").write_text(json.dumps(metrics))
    return to


OPEN_IMAGES = {"name": "openimages_synthetic", "kind": "openimages_synthetic",
               "num_classes": 8, "seed": 0}


def test_runs_on_two_datasets_are_compared_apart(made, tmp_path):
    """An LVIS-rules run and an Open Images run (a copy of run b saying so): one table,
    baseline and set of figures each; no difference or category AP across them."""
    oi = _copy(made["b"], tmp_path / "runs" / "oi", {"dataset": OPEN_IMAGES}, 0.1)
    out = tmp_path / "mixed"
    proc = acsl("report", str(made["a"]), str(oi), f"out_dir={out}", "baseline=bce",
                "resamples=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = json.loads((out / "report.json").read_text())["groups"]
    assert [g["dataset"] for g in groups] == [
        "synthetic (LVIS rules)", "openimages_synthetic (Open Images challenge AP)"]
    for group, run in zip(groups, (made["a"], oi), strict=True):
        saved = _metrics(run)
        rows = {r["model"]: r for r in group["rows"]}
        assert list(rows) == list(saved) and group["baseline"] == "bce"
        for label, r in rows.items():  # the run's own numbers, its own bce subtracted
            assert r["runs"] == [run.name]
            assert r["mean"]["AP"] == pytest.approx(100 * saved[label]["AP"], abs=0.006)
            assert r["delta"]["AP"] == pytest.approx(
                100 * (saved[label]["AP"] - saved["bce"]["AP"]), abs=0.011)
    md = (out / "report.md").read_text()
    assert "\n## synthetic (LVIS rules)\n" in md
    assert "\n## openimages_synthetic (Open Images challenge AP)\n" in md
    for suffix in ("-synthetic", "-openimages_synthetic"):
        assert (out / f"group_ap{suffix}.png").is_file() and f"(group_ap{suffix}.png)" in md
    assert not (out / "group_ap.png").exists()
    page = (out / "report.html").read_text()
    assert page.count('class="comparison"') == 2 and page.count('class="cats"') == 2
    assert "openimages_synthetic (Open Images challenge AP)" in proc.stdout
    # per-category AP: each dataset's own CSV, never a mean over both by category id
    from acsl_cli.reporting.run_groups import compare_groups

    lvis, other = compare_groups(load_runs([made["a"], oi]), "bce", 0)
    for c, run in ((lvis, made["a"]), (other, oi)):
        with open(run / "per_category_ap.csv", newline="") as fh:
            want = {int(r["category_id"]): float(r["bce"]) for r in csv.DictReader(fh)}
        assert c.row("bce").per_category == pytest.approx(want)


def test_a_baseline_one_dataset_lacks_is_said_not_taken_across(made, tmp_path):
    oi = _copy(made["b"], tmp_path / "runs" / "oi", {"dataset": OPEN_IMAGES})
    metrics = _metrics(oi)
    del metrics["bce"]
    (oi / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "rep"
    proc = acsl("report", str(made["a"]), str(oi), f"out_dir={out}", "baseline=bce",
                "resamples=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lvis, other = json.loads((out / "report.json").read_text())["groups"]
    assert lvis["note"] is None and any(r["delta"]["AP"] for r in lvis["rows"])
    assert other["note"].startswith("baseline=bce: no such row among these runs")
    assert all(r["delta"]["AP"] is None and r["baseline_row"] is None for r in other["rows"])
    assert other["note"] in (out / "report.md").read_text()
    assert f"{other['dataset']}: {other['note']}" in proc.stdout.splitlines()
    proc = acsl("report", str(made["a"]), str(oi), "baseline=nope", "--dry-run", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: baseline=nope: no such row in any dataset")


def test_rows_that_would_share_a_name_get_the_setting_that_differs(made, tmp_path):
    """Two runs of ``loss=bce``, one with ``loss.bg_factor=true``: both rows were "bce"."""
    cfg = yaml.safe_load((made["a"] / "config.yaml").read_text())
    heads = cfg["heads"]
    (hid,) = [h for h, v in heads.items() if v["label"] == "bce"]
    heads[hid]["loss"]["bg_factor"] = True
    other = _copy(made["a"], tmp_path / "runs" / "bgf", {"heads": heads}, 0.05)
    c = compare(load_runs([made["a"], other]), resamples=0)
    names = [r.name for r in c.rows]
    assert len(set(names)) == len(names)
    assert set(names) == {STAGE1_ROW, "bce [loss.bg_factor=false]", "bce [loss.bg_factor=true]"}
    for run, name in ((made["a"], "bce [loss.bg_factor=false]"),
                      (other, "bce [loss.bg_factor=true]")):
        assert c.row(name).runs == [run.name]
        assert c.row(name).mean["AP"] == pytest.approx(_metrics(run)["bce"]["AP"])
    with pytest.raises(ConfigError, match="baseline=bce: names several rows"):
        compare(load_runs([made["a"], other]), "bce", resamples=0)


def test_datasets_split_on_what_they_measure_not_on_input_size_or_paths():
    from acsl_cli.reporting.run_groups import group_runs
    from acsl_cli.reporting.runs import Run

    def run(name: str, **dataset) -> Run:
        data = {"name": "synthetic", "kind": "synthetic", "num_classes": 8, **dataset}
        return Run(Path(f"/r/{name}"), 0, "", {"seed": 0, "dataset": data}, {})

    runs = [run("a"), run("b", min_size=256, loss_defaults={"eql_lambda": 0.5}),
            run("c", num_classes=12),
            run("d", objects_per_image=4),  # given, but its kind's default: a and b hold it too
            Run(Path("/r/e"), None, "", {}, {}),
            Run(Path("/r/f"), 0, "", {"seed": 0, "dataset": {
                "name": "synthetic_lvis", "kind": "synthetic_lvis"}}, {}),
            run("g", objects_per_image=3)]  # a generator setting: another dataset
    groups = group_runs(runs)
    assert [[r.name for r in g.runs] for g in groups] == [
        ["a", "b", "d"], ["c"], ["e"], ["f"], ["g"]]
    # each title names the keys in which it differs from another dataset of its name
    assert [g.title for g in groups] == [
        "synthetic [dataset.num_classes=8 dataset.objects_per_image=4] (LVIS rules)",
        "synthetic [dataset.num_classes=12 dataset.objects_per_image=4] (LVIS rules)",
        "dataset unknown (no config.yaml) (metric unknown)",
        "synthetic_lvis (LVIS rules)",
        "synthetic [dataset.num_classes=8 dataset.objects_per_image=3] (LVIS rules)"]
    assert len({g.suffix for g in groups}) == 5 and all(
        g.suffix.startswith("-") and "/" not in g.suffix and " " not in g.suffix
        for g in groups)
    assert [g.suffix for g in group_runs(runs[:2])] == [""]  # one dataset: names unchanged


def test_the_caption_names_the_rows_the_deltas_are_taken_against():
    """Default baseline: each variant's stage-1 row, whatever loss trained it (was: the
    caption said 'stage1 (softmax CE)' under an EQLv2 end-to-end sweep); one full name:
    that row."""
    from acsl_cli.evaluation import METRIC_KEYS
    from acsl_cli.reporting.compare import compare
    from acsl_cli.reporting.compare_tables import caption
    from acsl_cli.reporting.runs import ModelRow, Run

    def run(seed: int, stage1: str, first: str, ap: float) -> Run:
        rows = {label: ModelRow(label, loss, None, {"name": loss},
                                dict.fromkeys(METRIC_KEYS, ap + 0.01 * k + 0.001 * seed))
                for k, (label, loss) in enumerate([(first, stage1), ("eqlv2", "eqlv2")])}
        config = {"seed": seed, "schedule": {"stage1": {"loss": stage1}}}
        return Run(Path(f"/r/{stage1}-{seed}"), seed, "", config, rows)

    e2e = [run(s, "eqlv2", "stage1 (eqlv2)", 0.4) for s in (0, 1)]
    assert "Δ = mean - mean of 'stage1 (eqlv2)', percentage points" in caption(
        compare(e2e, resamples=0))
    both = e2e + [run(s, "softmax_ce", "stage1 (softmax CE)", 0.3) for s in (0, 1)]
    c = compare(both, resamples=0)
    assert {r.baseline_row for r in c.rows} == {
        "stage1 (eqlv2) [schedule.stage1.loss=eqlv2]",
        "stage1 (softmax CE) [schedule.stage1.loss=softmax_ce]"}
    assert ("Δ = mean - mean of 'stage1 (eqlv2)' / 'stage1 (softmax CE)' of each row's "
            "variant, percentage points") in caption(c)
    one = "eqlv2 [schedule.stage1.loss=softmax_ce]"
    assert f"Δ = mean - mean of '{one}', percentage" in caption(compare(both, one, resamples=0))


def test_a_bare_baseline_serves_the_rows_of_a_variant_without_it_under_their_protocol():
    """``loss=eqlv2 schedule.stage1.loss=eqlv2`` runs against ``baseline=softmax_ce`` of
    decoupled runs (was: no differences for the end-to-end rows): each protocol's row
    against the baseline scored under the same protocol, paired by seed."""
    from acsl_cli.evaluation import METRIC_KEYS
    from acsl_cli.reporting.compare import compare
    from acsl_cli.reporting.compare_tables import caption
    from acsl_cli.reporting.runs import ModelRow, Run

    def run(seed: int, stage1: str, heads: dict[str, float]) -> Run:
        rows = {}
        for protocol, shift in (("standard", 0.0), ("fixed", 0.05)):
            for label, ap in heads.items():
                key = label if protocol == "standard" else f"{label} [{protocol}]"
                rows[key] = ModelRow(label, label, None, {"name": label},
                                     dict.fromkeys(METRIC_KEYS, ap + shift + 0.01 * seed),
                                     protocol)
        config = {"seed": seed, "schedule": {"stage1": {"loss": stage1}}}
        return Run(Path(f"/r/{stage1}-{seed}"), seed, "", config, rows)

    runs = [run(s, "softmax_ce", {"stage1 (softmax CE)": 0.3, "softmax_ce": 0.4})
            for s in (0, 1, 2)]
    runs += [run(s, "eqlv2", {"stage1 (eqlv2)": 0.35 + 0.02 * s, "eqlv2": 0.5})
             for s in (0, 1, 2)]
    c = compare(runs, "softmax_ce", resamples=0)
    e2e = c.row("stage1 (eqlv2) [schedule.stage1.loss=eqlv2 fixed]")
    assert e2e.baseline_row == "softmax_ce [schedule.stage1.loss=softmax_ce fixed]"
    # per seed (fixed AP, both + 0.05): 0.35 + 0.02 s - 0.4, paired: -0.05, -0.03, -0.01
    assert e2e.delta["AP"] == pytest.approx(-0.03)
    iv = e2e.interval["AP"]
    assert iv.kind == "seeds" and iv.n == 3
    half = 4.303 * 0.02 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert (iv.low, iv.high) == pytest.approx((-0.03 - half, -0.03 + half), abs=1e-4)
    head = c.row("eqlv2 [schedule.stage1.loss=eqlv2]")
    assert head.baseline_row == "softmax_ce [schedule.stage1.loss=softmax_ce]"
    assert head.delta["AP"] == pytest.approx(0.1)
    own = c.row("stage1 (softmax CE) [schedule.stage1.loss=softmax_ce]")
    assert own.baseline_row == "softmax_ce [schedule.stage1.loss=softmax_ce]"  # its variant's
    assert "'softmax_ce' of each row's variant (where it has none, of its protocol)" in \
        caption(c)
