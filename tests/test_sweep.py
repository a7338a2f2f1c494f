"""A real end-to-end sweep on a Fashion-MNIST subset, resume, Optuna's view and the store's queries."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner, Result

from kdbench import cli
from kdbench.config import parse_study
from kdbench.errors import StoreError
from kdbench.store import load_runs
from kdbench.sweep import plan_search, planned_total, run_sweep


def test_plan_counts(tiny_study_dict: dict) -> None:
    study = parse_study(tiny_study_dict)
    visits = plan_search(study)
    assert sorted(v.key for v in visits) == ["ce/lr=0.002/r=0", "kd/T=2/a=0.5/lr=0.002/r=0",
                                             "kd/T=4/a=0.5/lr=0.002/r=0"]
    assert planned_total(study) == 3 + 2 * 2
    default = parse_study({"name": "d"})
    assert len(plan_search(default)) == (20 + 1) * 3 * 3  # 4 T x 5 alpha and CE, x 3 lr x 3 replicates


@pytest.mark.slow  # a fresh interpreter imports torch: 4 s on a quiet machine, 14 s on a busy one
def test_a_sweep_worker_imports_no_pandas_pil_or_report_libraries() -> None:
    """What `kdbench sweep --as-worker` imports leaves out pandas (and pyarrow: ~95 MiB resident held through
    training), PIL and the report's libraries: a fresh interpreter proves it, whatever this one has imported."""
    code = ("import sys, kdbench.cli, kdbench.config, kdbench.progress, kdbench.store, kdbench.workers, kdbench.join, "
            "kdbench.launch; "
            "from kdbench.sweep import work_sweep; "
            "print(sorted(m for m in ('pandas', 'pyarrow', 'PIL', 'scipy', 'statsmodels', 'matplotlib', 'seaborn', "
            "'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_end_to_end_sweep_and_resume(small_study_dict: dict, db_url: str, tmp_path) -> None:
    study = parse_study(small_study_dict)
    cache = tmp_path / "cache"
    # stop after two visits, as if interrupted, then resume: nothing is redone, nothing duplicated
    run_sweep(study, storage=db_url, cache_dir=cache, max_visits=2)
    assert len(load_runs(db_url, "tiny")) == 2
    summary = run_sweep(study, storage=db_url, cache_dir=cache)
    runs = load_runs(db_url, "tiny")
    assert len(runs) == planned_total(study) == 7
    assert runs["visit"].is_unique and set(runs["state"]) == {"complete"}
    assert set(runs["kind"]) == {"kd", "ce", "finalist"}
    search = runs[runs["kind"] != "finalist"]
    assert search["test_acc"].isna().all()  # the search never looks at the test set
    fin = runs[runs["kind"] == "finalist"]
    assert fin["test_acc"].between(0.3, 1.0).all() and sorted(set(fin["seed"])) == [1, 2]
    # finalists and the teacher keep their test logits (float16, 500 test rows x 10) for the report's calibration
    from kdbench.store import Store

    store = Store.open(db_url)
    logits = store.test_logits([int(i) for i in fin["run_id"]])
    assert {len(b or b"") for b in logits.values()} == {500 * 10 * 2}
    teacher = store.study_teacher("tiny")
    assert teacher is not None and teacher.test_logits is not None and len(teacher.test_logits) == 500 * 10 * 2
    assert not any(store.test_logits([int(i) for i in search["run_id"]]).values())  # the search never tests
    # each finalist's calibration temperature, fitted on validation when it trained (the report scales by it)
    temperatures = store.calib_temperatures([int(i) for i in runs["run_id"]])
    assert set(temperatures) == {int(i) for i in fin["run_id"]} and all(0.05 < t < 20 for t in temperatures.values())
    row = runs.iloc[0]
    assert row["commit"] and row["device"].startswith("cpu")
    # the run records the torch it ran with: the installed distribution's version, the one torch reports
    stored_torch = row["versions"]["torch"]
    assert stored_torch == metadata.version("torch")
    assert stored_torch.split("+")[0] == torch.__version__.split("+")[0]
    assert row["config_hash"] == study.hash
    assert list(summary["loss"]) == ["kd", "ce"] and list(summary["n"]) == [2, 2]
    # Optuna sees the study as it is: one complete trial per visit
    kd = optuna.load_study(study_name="tiny", storage=db_url)
    assert [t.state.name for t in kd.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.params["temperature"] for t in kd.trials) == [2.0, 4.0]
    assert len(optuna.load_study(study_name="tiny.ce", storage=db_url).trials) == 1
    # kdbench show prints the teacher and the finalists' test accuracy over seeds
    shown = CliRunner().invoke(cli.main, ["show", "tiny", "--storage", db_url])
    assert shown.exit_code == 0, shown.output
    assert "tiny: teacher cnn-s: test" in shown.output and "best KD #1: T=" in shown.output
    assert "(sd, n=2)" in shown.output  # the mean ± sd over the 2 finalist seeds
    # a rerun of a finished study does nothing more
    run_sweep(study, storage=db_url, cache_dir=cache)
    assert len(load_runs(db_url, "tiny")) == 7
    # same name, different config: refused with a way out
    with pytest.raises(StoreError, match="--set name=tiny-2"):
        run_sweep(parse_study(small_study_dict, overrides=["student.epochs=2"]), storage=db_url, cache_dir=cache)


@pytest.mark.slow
def test_fused_sweep_matches_sequential(small_study_dict: dict, tmp_path) -> None:
    """A sweep told to fuse 4 (as ``search.fuse: 4`` does on CUDA) trains search visits of one replicate seed
    at once (never two seeds in one fused step); each gets the accuracy it gets alone, and its stored device
    says it was fused."""
    cache = tmp_path / "cache"
    got = {}
    study = parse_study(small_study_dict, overrides=["finalists.seeds=1", "search.replicates=2",
                                                     "data.val_fraction=0.5"])  # 1,000 rows: 3e-3 is 3 of them
    for fuse in (1, 4):
        url = f"sqlite:///{tmp_path / f'fuse{fuse}.db'}"
        run_sweep(study, storage=url, cache_dir=cache, fuse=fuse)
        runs = load_runs(url, "tiny")
        assert set(runs["state"]) == {"complete"} and len(runs) == planned_total(study)
        got[fuse] = runs.set_index("visit")
    search = [v.key for v in plan_search(study)]
    assert len(search) == 6
    assert got[1].loc[search, "lr"].tolist() == pytest.approx(got[4].loc[search, "lr"].tolist())
    assert got[1].loc[search, "val_acc"].tolist() == pytest.approx(got[4].loc[search, "val_acc"].tolist(), abs=3e-3)
    assert not got[1]["device"].str.contains("fused").any()
    assert got[4].loc[search, "device"].str.endswith("fused x3").all()  # 3 visits per seed: groups of 3
    assert not got[4].drop(index=search)["device"].str.contains("fused").any()  # finalists train alone
    for fuse in ("1", "auto"):
        fused = parse_study(small_study_dict, overrides=[f"search.fuse={fuse}"])
        assert parse_study(small_study_dict).hash == fused.hash


def _sweep_cli(raw: dict, tmp_path) -> tuple[str, list[str], Result]:
    """``kdbench sweep`` of the study ``raw`` (written as a file) into a fresh database: its URL, the arguments
    (to run it again) and the result, checked to have succeeded."""
    import yaml

    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    url = f"sqlite:///{tmp_path / (raw['name'] + '.db')}"
    args = ["sweep", str(path), "--storage", url, "--cache-dir", str(tmp_path / "cache"), "--quiet", "--device", "cpu"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    return url, args, result


@pytest.mark.slow
def test_label_smoothed_ce_is_a_baseline_end_to_end(small_study_dict: dict, tmp_path) -> None:
    """``baseline.label_smoothing: [0.1]`` through the CLI: CE+LS trains as one more cell and a finalist on the
    shared seeds, its epsilon on its runs and in its Optuna study; the report's table shows CE, CE+LS and KD, and
    its verdict compares KD with the better baseline on validation."""
    import pandas as pd

    raw = {**small_study_dict, "name": "ls", "baseline": {"ce": True, "label_smoothing": [0.1]}}
    url, _, _ = _sweep_cli(raw, tmp_path)
    runs = load_runs(url, "ls")
    assert len(runs) == planned_total(parse_study(raw)) == 4 + 3 * 2 and set(runs["state"]) == {"complete"}
    assert runs.groupby("kind").size().to_dict() == {"kd": 2, "ce": 1, "ce_ls": 1, "finalist": 6}
    smoothed = runs[runs["loss"] == "ce_ls"]
    assert set(smoothed["params"]) == {'{"label_smoothing": 0.1}'} and len(smoothed) == 3  # stored on every run
    fin = runs[runs["kind"] == "finalist"]
    assert fin.groupby("loss")["seed"].apply(sorted).to_dict() == {m: [1, 2] for m in ("kd", "ce", "ce_ls")}
    assert [t.params for t in optuna.load_study(study_name="ls.ce_ls", storage=url).trials] == [
        {"label_smoothing": 0.1, "lr": 2e-3}]
    # CE and CE+LS train differently from the same seed: the smoothing reached the loss
    ce_run, ls_run = (runs[runs["visit"] == k].iloc[0]
                      for k in ("ce/lr=0.002/r=0", "ce_ls/label_smoothing=0.1/lr=0.002/r=0"))
    assert ce_run["seed"] == ls_run["seed"] and ce_run["val_loss"] != ls_run["val_loss"]
    out = tmp_path / "report"
    rep = CliRunner().invoke(cli.main, ["report", "ls", "--storage", url, "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    table = pd.read_csv(out / "comparison.csv")
    assert table["arm"].tolist() == ["teacher", "CE student", "CE+LS student", "KD student"]
    val = fin[fin["rank"] == 0].groupby("loss")["val_acc"].mean()
    name = "CE+LS" if val["ce_ls"] > val["ce"] else "CE"  # the better on validation (CE on a tie)
    html = (out / "index.html").read_text()
    assert f"The baseline is {name}, the better on validation of CE (" in html
    assert f"KD − {name} = " in html or f"KD and {name} could not be told apart" in html


@pytest.mark.slow
def test_methods_sweep_end_to_end(small_study_dict: dict, tmp_path) -> None:
    """Hinton's KD, DKD and DIST on one grid through the CLI: each method's runs, its Optuna study with its
    own parameters, a finalist per method on the shared seeds, the summary naming every parameter; a rerun
    trains nothing."""
    raw = {**small_study_dict, "name": "meth"}
    raw["search"] = {**raw["search"], "method": ["kd", "dkd", "dist"],
                     "spaces": {"dkd": {"temperature": [2, 4]}, "dist": {"temperature": [4], "kd_weight": [1, 2]}}}
    url, args, result = _sweep_cli(raw, tmp_path)
    runs = load_runs(url, "meth")
    study = parse_study(raw)
    assert len(runs) == planned_total(study) == 7 + 4 * 2 and set(runs["state"]) == {"complete"}
    assert runs.groupby("kind").size().to_dict() == {"kd": 2, "dkd": 2, "dist": 2, "ce": 1, "finalist": 8}
    fin = runs[runs["kind"] == "finalist"]
    assert fin.groupby("loss")["seed"].apply(sorted).to_dict() == {m: [1, 2] for m in ("kd", "dkd", "dist", "ce")}
    dist = optuna.load_study(study_name="meth.dist", storage=url)
    assert sorted(t.params["kd_weight"] for t in dist.trials) == [1.0, 2.0]
    assert {t.params["inter_weight"] for t in dist.trials} == {1.0}  # the published value, recorded
    dkd_fin = fin[fin["loss"] == "dkd"].iloc[0]
    assert dkd_fin["temperature"] in (2.0, 4.0) and '"nckd_weight": 8.0' in dkd_fin["params"]
    assert "best DKD #1: T=" in result.output and "nckd_weight=8" in result.output
    again = CliRunner().invoke(cli.main, args)
    assert again.exit_code == 0 and len(load_runs(url, "meth")) == len(runs)
    # the report: the method table, calibration from the stored logits, cost, every trial, tables that compile
    out = tmp_path / "report"
    rep = CliRunner().invoke(cli.main, ["report", "meth", "--storage", url, "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    html = (out / "index.html").read_text()
    for section in ("Distillation methods compared", "Calibration", "Cost", "Every trial", "optuna-dashboard sqlite"):
        assert section in html, section
    methods = (out / "methods.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in methods[1:]] == ["Hinton KD", "DKD", "DIST", "CE"]
    calibration = (out / "calibration.csv").read_text()
    for arm in ("teacher", "KD student", "DKD student", "DIST student", "CE student"):
        assert f"\n{arm}," in calibration, arm
    import pandas as pd

    calib = pd.read_csv(out / "calibration.csv").set_index("arm")  # ECE after temperature scaling, each student
    students = calib.drop(index="teacher")
    assert students["n_ts"].eq(students["n"]).all() and students["t_mean"].between(0.05, 20).all()
    assert students["ece_ts_mean"].between(0, 1).all()
    assert (out / "method-cells.png").exists() and (out / "trials.png").exists()
    import shutil

    if shutil.which("pdflatex"):
        from test_report_render import _compiles_within_the_text_width

        for table in ("methods", "calibration", "cost"):
            _compiles_within_the_text_width(out / f"{table}.tex", tmp_path)


@pytest.mark.slow
def test_a_range_search_samples_each_methods_own_parameters(small_study_dict: dict,
                                                             tmp_path) -> None:
    raw = {**small_study_dict, "name": "mr", "finalists": {"top_k": 1, "seeds": 1}}
    raw["search"] = {"method": ["kd", "lskd"], "temperature": {"low": 1, "high": 8}, "alpha": [0.5],
                     "lr": [2e-3], "trials": 3, "sampler": "random",
                     "spaces": {"lskd": {"kd_weight": {"low": 1, "high": 9}}}}
    study = parse_study(raw)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    run_sweep(study, storage=url, cache_dir=tmp_path / "cache")
    runs = load_runs(url, "mr")
    assert runs.groupby("kind").size().to_dict() == {"kd": 3, "lskd": 3, "ce": 3, "finalist": 3}
    lskd = optuna.load_study(study_name="mr.lskd", storage=url)
    weights = [t.params["kd_weight"] for t in lskd.trials]
    assert len(set(weights)) == 3 and all(1 <= w <= 9 for w in weights)
    stored = runs[runs["kind"] == "lskd"]["params"].map(lambda p: __import__("json").loads(p)["kd_weight"])
    assert sorted(stored) == pytest.approx(sorted(weights))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_gives_freed_heap_pages_back() -> None:
    """Half of 100 MiB of small tensors (heap chunks, below glibc's mmap threshold) freed stays resident until a
    worker's release_memory, which the sweep calls after set-up and after each trial."""
    from kdbench.sweep.run import release_memory

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    held = [torch.ones(16384) for _ in range(1600)]  # 64 KiB each
    del held[::2]  # 50 MiB of holes between live chunks: nothing the heap's top trims by itself
    before = rss_mib()
    release_memory()
    assert before - rss_mib() > 25
    assert len(held) == 800  # the live half kept until here: the holes stay holes
