"""Experiment trackers (kdbench/trackers.py): a real sweep and report logged to MLflow and TensorBoard, read back
with their own readers; the study's hash and store unchanged; a missing package and a tracker failing mid-sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import small_study_raw, tiny_study_raw

from kdbench import cli
from kdbench.config import load_study, parse_study
from kdbench.store import Store, load_runs
from kdbench.sweep import SweepEvents, planned_total, run_sweep

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _own_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store under the cache is what is tested


def _study_file(folder: Path, name: str = "tiny", study: dict | None = None, **extra: object) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**(study or tiny_study_raw()), **extra}))
    return path


# ------------------------------------------------------------------------------ the study key, the hash, the CLI


def test_log_is_neither_hashed_nor_stored() -> None:
    quick = REPO / "studies" / "fashion-mnist-quick.yaml"
    plain = load_study(quick).hash  # 0dc2d4a516624508 since the quick study's grid went to 9 cells (2026-12-08)
    assert plain == "0dc2d4a516624508"
    logged = load_study(quick, ["log=[mlflow, tensorboard]"])
    assert logged.log == ["mlflow", "tensorboard"] and logged.hash == plain
    assert "log" not in logged.resolved() and "log" not in json.loads(logged.model_dump_json())  # the stored config
    assert parse_study({**tiny_study_raw(), "log": ["mlflow", "mlflow"]}).log == ["mlflow"]


def test_unknown_tracker_is_one_line(tmp_path: Path) -> None:
    path = _study_file(tmp_path)
    db = tmp_path / "kd.db"
    for args, needle in ((["--log", "mlflow,wandb"], "--log 'wandb': unknown tracker; choose from mlflow, tensorboard"),
                         (["--set", "log=[wandb]"], "log.0: Input should be 'mlflow' or 'tensorboard'")):
        result = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", f"sqlite:///{db}", *args])
        assert result.exit_code == 2, result.output
        assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not db.exists()
    report = CliRunner().invoke(cli.main, ["report", "tiny", "--storage", f"sqlite:///{db}", "--log", "mlflow",
                                           "--format", "md"])
    assert report.exit_code == 2 and "--format md writes none; use --format html" in report.output


@pytest.mark.parametrize("tracker", ["mlflow", "tensorboard"])
def test_missing_package_is_one_line_before_anything_runs(tracker: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The package made unimportable (``sys.modules[name] = None``: ``import`` raises a real ImportError): one line
    naming the extra, status 2, from the study file's log: or --log, sweep or report; nothing touched."""
    monkeypatch.setitem(sys.modules, tracker, None)
    db, cache = tmp_path / "kd.db", tmp_path / "cache"
    for args in (["sweep", str(_study_file(tmp_path, "logged", log=[tracker]))],
                 ["sweep", str(_study_file(tmp_path)), "--log", tracker], ["report", "tiny", "--log", tracker]):
        result = CliRunner().invoke(cli.main, [*args, "--storage", f"sqlite:///{db}", "--cache-dir", str(cache)])
        assert result.exit_code == 2, result.output
        assert result.output == f"kdbench: error: log: {tracker} needs the {tracker} package; " \
                                f"pip install 'kdbench[{tracker}]'\n"
        assert not db.exists() and not cache.exists()


@pytest.mark.slow
def test_missing_package_in_a_fresh_process(tmp_path: Path) -> None:
    """The same in a process where mlflow was never imported, as a user without the extra runs it."""
    db, cache = tmp_path / "kd.db", tmp_path / "cache"
    code = "import sys; sys.modules['mlflow'] = None; from kdbench.cli import main; main(prog_name='kdbench')"
    done = subprocess.run([sys.executable, "-c", code, "sweep", str(_study_file(tmp_path, log=["mlflow"])),
                           "--storage", f"sqlite:///{db}", "--cache-dir", str(cache)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    assert done.stderr == "kdbench: error: log: mlflow needs the mlflow package; pip install 'kdbench[mlflow]'\n"
    assert not db.exists() and not cache.exists()


# ------------------------------------------------------------------------------ a real sweep and report, logged


@dataclass
class Logged:
    url: str
    cache: Path
    out: Path
    sweep_output: str
    study: dict  # the study swept (log aside): its teacher is in the cache


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, small_fmnist_npz: Path) -> Iterator[Logged]:
    """The small study swept through the CLI (``log: [tensorboard]`` in the file, ``--log mlflow``), then reported
    (``--log mlflow --log tensorboard``)."""
    study = small_study_raw(small_fmnist_npz)
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        tmp = tmp_path_factory.mktemp("trackers")
        path, url = _study_file(tmp, study=study, log=["tensorboard"]), f"sqlite:///{tmp / 'kd.db'}"
        cache, out = tmp / "cache", tmp / "report"
        common = ["--storage", url, "--cache-dir", str(cache), "--log", "mlflow"]
        swept = CliRunner().invoke(cli.main, ["sweep", str(path), "--quiet", "--device", "cpu", *common])
        assert swept.exit_code == 0, swept.output
        reported = CliRunner().invoke(cli.main, ["report", "tiny", "--out", str(out), *common, "--log", "tensorboard"])
        assert reported.exit_code == 0, reported.output
        yield Logged(url, cache, out, swept.output, study)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved




@pytest.mark.slow
def test_every_run_is_in_mlflow_as_the_store_has_it(logged: Logged) -> None:
    store = Store.open(logged.url, create=False)
    runs = load_runs(logged.url, "tiny").set_index("run_id")
    epochs = store.epochs("tiny")
    study = store.study_config("tiny")
    assert len(runs) == planned_total(study) and set(runs["state"]) == {"complete"}
    assert "log" not in store.stored_config("tiny")  # the store holds what it held without trackers
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{logged.cache / 'mlflow.db'}")  # the default store: in the cache
    experiment = client.get_experiment_by_name("tiny")  # one experiment per study, named after it
    assert experiment is not None
    assert experiment.artifact_location == (logged.cache / "mlartifacts" / "tiny").resolve().as_uri()
    mruns = client.search_runs([experiment.experiment_id], max_results=1000)
    by_id = {int(r.data.tags["kdbench.run_id"]): r for r in mruns if r.data.tags["kdbench.stage"] != "report"}
    assert sorted(by_id) == sorted(runs.index)  # one MLflow run per kdbench run
    for run_id, row in runs.iterrows():
        m = by_id[int(run_id)]
        tags, params, metrics = m.data.tags, m.data.params, m.data.metrics
        assert m.info.run_name == row["visit"] and m.info.status == "FINISHED"
        assert tags["kdbench.study"] == "tiny" and tags["kdbench.stage"] == row["kind"]
        assert tags["kdbench.seed"] == str(row["seed"]) and tags["kdbench.run_id"] == str(run_id)
        assert tags["kdbench.config_hash"] == row["config_hash"] == study.hash
        assert tags["kdbench.visit"] == row["visit"] and tags["kdbench.state"] == "complete"
        assert params["method"] == row["loss"] and params["seed"] == str(row["seed"])
        assert float(params["lr"]) == row["lr"] and params["epochs"] == "1" and params["budget"] == row["budget"]
        if row["loss"] == "kd":
            assert float(params["temperature"]) == row["temperature"] and float(params["alpha"]) == row["alpha"]
        else:
            assert "temperature" not in params
        for key in ("val_acc", "val_loss", "wall_time_s", "samples_per_s"):
            assert metrics[key] == pytest.approx(row[key], rel=1e-12)
        if row["kind"] == "finalist":
            assert metrics["test_acc"] == pytest.approx(row["test_acc"], rel=1e-12)
        else:
            assert "test_acc" not in metrics  # the search never tests, and neither does its copy
        curve = epochs[epochs["run_id"] == run_id]
        history = client.get_metric_history(m.info.run_id, "epoch/val_acc")
        assert [(h.step, h.value) for h in history] == list(zip(curve["epoch"], curve["val_acc"], strict=True))
    # the report: one run in the study's experiment holding every file of the report
    reports = [r for r in mruns if r.data.tags["kdbench.stage"] == "report"]
    assert len(reports) == 1 and reports[0].data.tags["kdbench.study"] == "tiny"
    assert reports[0].data.tags["kdbench.config_hash"] == study.hash and reports[0].info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    written = {p.name for p in logged.out.iterdir() if p.is_file()}
    assert "index.html" in names and written <= names
    assert any(n.endswith(".csv") for n in names) and any(n.endswith(".png") for n in names)


@pytest.mark.slow
def test_every_run_has_its_tensorboard_events(logged: Logged) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = Store.open(logged.url, create=False)
    runs = load_runs(logged.url, "tiny").set_index("run_id")
    epochs = store.epochs("tiny")
    folder = logged.cache / "tensorboard" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(str(i) for i in runs.index), "report"])
    for run_id, row in runs.iterrows():
        acc = EventAccumulator(str(folder / str(run_id)))
        acc.Reload()
        curve = epochs[epochs["run_id"] == run_id]
        scalars = acc.Scalars("epoch/val_acc")
        assert [s.step for s in scalars] == list(curve["epoch"])
        assert [s.value for s in scalars] == pytest.approx(list(curve["val_acc"]), rel=1e-6)  # float32 in the file
        assert acc.Scalars("final/val_acc")[-1].value == pytest.approx(row["val_acc"], rel=1e-6)
        assert ("final/test_acc" in acc.Tags()["scalars"]) == (row["kind"] == "finalist")
    report = EventAccumulator(str(folder / "report"))
    report.Reload()
    assert "report/comparison" in report.Tags()["images"]


@pytest.mark.slow
def test_logging_changes_no_result(logged: Logged, tmp_path: Path) -> None:
    """The first visit again without trackers, on the same cached teacher: the same accuracy, to the last bit."""
    cache = tmp_path / "cache"
    shutil.copytree(logged.cache / "teachers", cache / "teachers")
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    run_sweep(parse_study(logged.study), storage=url, cache_dir=cache, max_visits=1)
    plain = load_runs(url, "tiny").iloc[0]
    with_log = load_runs(logged.url, "tiny").set_index("visit").loc[plain["visit"]]
    assert plain["val_acc"] == with_log["val_acc"] and plain["config_hash"] == with_log["config_hash"]
    assert not (cache / "mlflow.db").exists() and not (cache / "tensorboard").exists()


@pytest.mark.slow
def test_a_tracker_failing_mid_sweep_loses_no_run(logged: Logged, tmp_path: Path) -> None:
    """The study's MLflow experiment deleted (as from the UI) once the sweep has started: one warning, MLflow off
    for the rest of the sweep, every run stored, TensorBoard still logging each."""
    from mlflow.tracking import MlflowClient

    cache = tmp_path / "cache"
    shutil.copytree(logged.cache / "teachers", cache / "teachers")
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    lines: list[str] = []
    client = MlflowClient(f"sqlite:///{cache / 'mlflow.db'}")

    def delete_experiment(*_: object) -> None:
        found = client.get_experiment_by_name("tiny")
        if found is not None and found.lifecycle_stage == "active":
            client.delete_experiment(found.experiment_id)

    events = SweepEvents(on_visit_start=delete_experiment, on_log=lines.append)
    study = parse_study({**logged.study, "log": ["mlflow", "tensorboard"]})
    run_sweep(study, storage=url, cache_dir=cache, max_visits=2, events=events)
    runs = load_runs(url, "tiny")
    assert len(runs) == 2 and set(runs["state"]) == {"complete"}
    warnings = [line for line in lines if "log: mlflow failed" in line]
    assert len(warnings) == 1 and "logging to mlflow is off for the rest of this process" in warnings[0]
    assert sorted(p.name for p in (cache / "tensorboard" / "tiny").iterdir()) == sorted(str(i) for i in runs["run_id"])


@pytest.mark.slow
def test_mlflow_tracking_uri_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$MLFLOW_TRACKING_URI wins over the cache's mlflow.db; one that cannot be opened is one line naming it."""
    from mlflow.tracking import MlflowClient

    from kdbench.errors import OutputError
    from kdbench.loop import EpochRecord
    from kdbench.trackers import RunRecord, Trackers

    cache = tmp_path / "cache"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://nowhere")
    with pytest.raises(OutputError, match=r"^log: mlflow \(bogus://nowhere\): cannot open it: .*drop mlflow from log$"):
        Trackers.open(["mlflow"], "s", cache)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    curve = [EpochRecord(epoch=e, train_loss=1.0 / (e + 1), val_acc=0.5 + e / 10, val_loss=1.0, seconds=2.0, lr=1e-3,
                         steps=10 * (e + 1)) for e in range(3)]
    Trackers.open(["mlflow"], "s", cache).log_run(RunRecord(
        "s", 7, "ce/lr=0.001/r=0", "complete", {"method": "ce", "lr": 1e-3}, {"kdbench.run_id": "7"}, curve,
        {"val_acc": 0.7, "test_acc": None}, 1_700_000_000.0, 1_700_000_010.0))
    assert not (cache / "mlflow.db").exists()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("s")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics == {"val_acc": 0.7, "epoch/val_acc": 0.7, "epoch/val_loss": 1.0,
                                "epoch/train_loss": pytest.approx(1 / 3), "epoch/lr": 1e-3}
    history = client.get_metric_history(run.info.run_id, "epoch/val_acc")
    assert [(h.step, h.value, h.timestamp) for h in history] == [  # step: the epoch; time: start + its seconds
        (0, 0.5, 1_700_000_002_000), (1, 0.6, 1_700_000_004_000), (2, 0.7, 1_700_000_006_000)]
    assert run.info.start_time == 1_700_000_000_000 and run.info.end_time == 1_700_000_010_000
