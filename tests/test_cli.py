"""The CLI is thin: one database connection per process, opened at the edge and passed down."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner

from kdbench import cli
from kdbench.errors import StoreError
from kdbench.store import db


@pytest.mark.slow
def test_sweep_opens_the_database_once(small_study_dict: dict, db_url: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    opened = {"engine": 0, "optuna": 0}
    make_engine, rdb_init = db.make_engine, optuna.storages.RDBStorage.__init__

    def count_engine(url: str) -> Any:
        opened["engine"] += 1
        return make_engine(url)

    def count_optuna(self: Any, *args: Any, **kwargs: Any) -> None:
        opened["optuna"] += 1
        rdb_init(self, *args, **kwargs)

    monkeypatch.setattr(db, "make_engine", count_engine)
    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", count_optuna)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    # no --quiet: standard output is not a terminal here, so the sweep prints plain lines as it goes
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", db_url, "--device", "cpu",
                                        "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
                                        "--max-visits", "2", "--set", "search.fuse=4"])
    assert res.exit_code == 0, res.output
    assert "tiny: 2 runs" in res.output
    assert "teacher epoch 1/1: train loss" in res.output and "[1/7] " in res.output and "[2/7] " in res.output
    assert opened == {"engine": 1, "optuna": 1}
    # search.fuse: 4 on the CPU: said once, not applied (fused students are slower there)
    assert res.output.count("search.fuse: 4 is not applied on the CPU") == 1
    from kdbench.store import Store
    assert not Store.open(db_url).runs("tiny")["device"].str.contains("fused").any()
    # the next commands, on the same database; the printed report command runs as printed
    report_line = f"next: kdbench report tiny --storage {db_url}   # writes reports/tiny/index.html"
    assert report_line in res.output and f"      optuna-dashboard {db_url}   # " in res.output
    monkeypatch.chdir(tmp_path)
    rep = CliRunner().invoke(cli.main, shlex.split(report_line.split("#")[0])[2:])
    assert rep.exit_code == 0, rep.output
    assert (tmp_path / "reports" / "tiny" / "index.html").exists()
    # a URL from $KDBENCH_STORAGE (how a password is passed) stays a reference to it
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--device", "cpu", "--threads", "1", "--cache-dir",
                                        str(tmp_path / "cache"), "--max-visits", "1", "--set", "search.fuse=4"],
                             env={"KDBENCH_STORAGE": db_url})
    assert res.exit_code == 0, res.output
    assert 'next: kdbench report tiny --storage "$KDBENCH_STORAGE"' in res.output
    assert 'optuna-dashboard "$KDBENCH_STORAGE"' in res.output and db_url not in res.output.split("next:")[1]


def test_version_prints_the_package_version_and_the_commit() -> None:
    """`kdbench --version`: the installed version and the commit every stored run records, without torch."""
    import subprocess
    import sys
    from importlib.metadata import version

    import kdbench

    res = CliRunner().invoke(cli.main, ["--version"])
    assert res.exit_code == 0, res.output
    here = Path(kdbench.__file__).parent
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
    assert sha and res.output.startswith(f"kdbench {version('kdbench')} (commit {sha}")
    assert version("kdbench") == kdbench.__version__
    out = subprocess.run([sys.executable, "-c", "import sys; from kdbench.cli import main; main(['--version'])"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == res.output, out.stderr


def test_show_prints_cells_effects_reliability_and_budgets(tmp_path: Path) -> None:
    from report_db import make_replicated_db

    url = f"sqlite:///{tmp_path / 'rep.db'}"
    make_replicated_db(url, "rep")
    res = CliRunner().invoke(cli.main, ["show", "rep", "--storage", url])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "best cells (validation accuracy at 3 epochs, mean over seeds at the cell's best lr" in out
    first = out.split("best cells", 1)[1].splitlines()[1]
    assert first.startswith("  T=4 alpha=0.1: 83.30% ± ") and first.endswith("vs CE +3.00 pp [+2.50, +3.50] *")
    assert "  CE: 80.30% ± " in out and "(no CI: the same difference on every seed)" in out
    assert "RM-ANOVA" in out and "(reliability " in out and "after Holm's correction: T=4 α=0.1" in out
    assert "Tuning budgets: KD: 4 cells × 2 lr × 3 seeds; CE: 2 lr × 3 seeds." in out


@pytest.mark.slow
def test_workers_get_the_storage_url_by_environment_not_argv(small_study_dict: dict, db_url: str,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--workers N` passes --storage to its workers in $KDBENCH_STORAGE: a password in the URL never shows in
    a process list (argv is readable by every user, a process's environment only by its owner)."""
    import subprocess

    from kdbench import workers

    started: list[tuple[list[str], dict[str, str]]] = []
    popen = subprocess.Popen

    def record(cmd: list[str], **kw: Any) -> Any:  # the workers only: provenance's git and uname calls go by too
        if "sweep" in cmd:
            started.append((list(cmd), dict(kw.get("env") or {})))
        return popen(cmd, **kw)

    monkeypatch.setattr(workers.subprocess, "Popen", record)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", db_url, "--quiet", "--device", "cpu",
                                        "--cache-dir", str(tmp_path / "cache"), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert len(started) == 2
    for cmd, env in started:
        assert db_url not in " ".join(cmd) and "--storage" not in cmd
        assert env["KDBENCH_STORAGE"] == db_url
    from kdbench.store import Store
    assert set(Store.open(db_url).runs("tiny")["state"]) == {"complete"}  # the workers found the database


def test_show_on_a_half_finished_grid_says_what_is_missing(tmp_path: Path) -> None:
    """A T ∈ {1, 2, 4} grid with complete KD runs at T = 2 only: T is "not estimable yet", never "not varied";
    a cell of one seed shows no interval word and no "nan"; a stored accuracy of 1.7 is refused in one line."""
    import sqlalchemy as sa
    from report_db import make_db

    url = f"sqlite:///{tmp_path / 'half.db'}"
    make_db(url, "half", kd_trials={(2.0, 0.5): [("complete", 0.890, 1e-3)], (2.0, 0.9): [("complete", 0.865, 1e-3)],
                                    (4.0, 0.5): [("failed", None, 1e-3)]})
    shown = CliRunner().invoke(cli.main, ["show", "half", "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert ("T's effect cannot be estimated yet: of the planned T ∈ {1, 2, 4}, only T = 2 has complete KD runs "
            "(T = 1, 4: no complete KD run yet).") in shown.output
    assert "vs CE +2.00 pp (n=1, no interval)" in shown.output
    assert "was not varied" not in shown.output and "nan" not in shown.output.lower()
    assert "(n=1, no interval)" in shown.output and "(95% CI, n=1)" not in shown.output
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # complete finalists without a test accuracy: said so, never "nan%"
        conn.execute(sa.text("UPDATE kdbench_runs SET test_acc = NULL WHERE kind = 'finalist' AND loss = 'kd'"))
        conn.execute(sa.text("UPDATE kdbench_runs SET test_acc = NULL WHERE kind = 'finalist' AND loss = 'ce' "
                             "AND seed = 1"))
    shown = CliRunner().invoke(cli.main, ["show", "half", "--storage", url])
    assert shown.exit_code == 0 and "nan" not in shown.output.lower(), shown.output
    assert re.search(r"best KD #1: T=2 alpha=0\.5 lr=0\.002: no test accuracy stored for its \d complete runs\n",
                     shown.output), shown.output
    assert re.search(r"best CE #1: lr=0\.002: test [\d.]+% ± [\d.]+% \(sd, n=4\); 1 complete run\(s\) stored no "
                     r"test accuracy\n", shown.output), shown.output
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE kdbench_runs SET val_acc = 1.7 WHERE id = (SELECT MIN(id) FROM kdbench_runs "
                             "WHERE kind = 'kd')"))
    engine.dispose()
    bad = CliRunner().invoke(cli.main, ["show", "half", "--storage", url])
    lines = bad.stderr.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1, bad.output
    assert "val_acc = 1.7, not an accuracy (a fraction in [0, 1])" in lines[0] and "--replace" in lines[0]
    with engine.begin() as conn:  # a negative loss is as impossible: refused the same way, naming run and column
        conn.execute(sa.text("UPDATE kdbench_runs SET val_acc = 0.89"))
        conn.execute(sa.text("UPDATE kdbench_runs SET test_loss = -0.25 WHERE kind = 'finalist' AND seed = 2"))
    engine.dispose()
    bad = CliRunner().invoke(cli.main, ["show", "half", "--storage", url])
    lines = bad.stderr.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1, bad.output
    assert re.search(r"run \d+ \(final/\w+/rank=0/seed=2\) has test_loss = -0.25, not a cross-entropy", lines[0])


def test_show_names_each_arm_as_the_report_does_on_a_half_finished_step_grid(tmp_path: Path) -> None:
    """With CE+LS finalists and ``student.eval_every``, the half-finished grid's sentences hold as above, and CE with
    label smoothing is named as the report names it ("CE+LS (label smoothing 0.1)"), never by its internal
    name; an impossible accuracy at an evaluation point is refused on read as a run's is."""
    import sqlalchemy as sa
    from report_db import make_db

    from kdbench.report.frames import study_frames

    url = f"sqlite:///{tmp_path / 'half.db'}"
    make_db(url, "half", kd_trials={(2.0, 0.5): [("complete", 0.890, 1e-3)], (2.0, 0.9): [("complete", 0.865, 1e-3)],
                                    (4.0, 0.5): [("failed", None, 1e-3)]}, ls_test={1: 0.90, 2: 0.905, 3: 0.91},
            eval_every=100)
    shown = CliRunner().invoke(cli.main, ["show", "half", "--storage", url])
    out = shown.output
    assert shown.exit_code == 0, out
    assert re.search(r"best CE\+LS \(label smoothing 0\.1\) #1: lr=0\.002: test 90\.50% ± 0\.50% \(sd, n=3\)\n", out)
    assert re.search(r"best KD #1: T=2 alpha=0\.5 lr=0\.002: test ", out) and "best CE #1: lr=0.002: test " in out
    assert not re.search(r"ce_ls|label_smoothing", out, re.IGNORECASE), out
    assert re.search(r"\nCE +3 +0\nKD +2 +1\n", out), out  # runs by kind, each arm as named everywhere
    assert "T's effect cannot be estimated yet" in out and "was not varied" not in out and "nan" not in out.lower()
    assert "(n=1, no interval)" in out and "(95% CI, n=1)" not in out
    assert study_frames(url, "half", load_images=False).curves["x"].tolist()[:3] == [100, 200, 300]  # steps
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE kdbench_epochs SET val_acc = 1.7 WHERE id = (SELECT MIN(id) FROM kdbench_epochs)"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"run \d+ \(final/\w+/rank=0/seed=\d\) has val_acc = 1.7, not an accuracy"):
        study_frames(url, "half", load_images=False)


@pytest.mark.slow
def test_eval_every_gives_each_run_a_curve_through_the_cli(small_study_dict: dict, db_url: str,
                                                           tmp_path: Path) -> None:
    """``student.eval_every: 3`` on 10 steps: every run stores points at steps 3, 6, 9 and 10, Optuna gets the
    same points, the run keeps its end-of-run accuracy, and the report draws learning curves on a step axis."""
    from kdbench.report.frames import study_frames
    from kdbench.store import Store

    small_study_dict["student"] = {"model": "mlp-800", "steps": 10, "batch_size": 16, "eval_every": 3}
    small_study_dict["search"] = {"temperature": [4], "alpha": [0.5], "lr": [2e-3], "replicates": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(small_study_dict))
    res = CliRunner().invoke(cli.main, ["sweep", str(path), "--storage", db_url, "--device", "cpu", "--threads", "1",
                                        "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert res.exit_code == 0, res.output
    store = Store.open(db_url)
    runs, points = store.runs("tiny"), store.epochs("tiny")
    assert set(runs["kind"]) == {"kd", "ce", "finalist"} and (runs["state"] == "complete").all()
    for run_id, g in points.groupby("run_id"):
        assert g["steps"].tolist() == [3, 6, 9, 10] and g["epoch"].tolist() == [0, 1, 2, 3]
        run = runs.set_index("run_id").loc[run_id]
        assert run["val_acc"] == g["val_acc"].iloc[-1] and run["epochs_done"] == 1
    assert runs.loc[runs["kind"] != "finalist", "test_acc"].isna().all()  # test: finalists only
    trials = optuna.load_study(study_name=runs["optuna_study"].dropna().iloc[0], storage=db_url).trials
    assert all(sorted(t.intermediate_values) == [0, 1, 2, 3] for t in trials)
    sf = study_frames(db_url, "tiny", load_images=False)
    assert sf.curves.groupby("loss")["x"].apply(list).tolist() == [[3.0, 6.0, 9.0, 10.0]] * 2
    rep = CliRunner().invoke(cli.main, ["report", "tiny", "--storage", db_url, "--out", str(tmp_path / "r")])
    assert rep.exit_code == 0, rep.output
    assert (tmp_path / "r" / "learning-curves.png").exists()
    assert "No learning curves" not in (tmp_path / "r" / "index.html").read_text()
