"""Three `kdbench sweep` workers started at once on a real PostgreSQL server finish one study together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from kdbench.config import parse_study
from kdbench.store import load_runs
from kdbench.sweep import plan_search, planned_total

WORKERS = 3


@pytest.mark.slow
def test_three_workers_share_a_study(needs_fmnist: None, postgres_url: str, tiny_study_dict: dict,
                                     tmp_path: Path) -> None:
    tiny_study_dict["search"]["temperature"] = [1, 2, 4]
    study = parse_study(tiny_study_dict)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study_dict))
    cmd = [sys.executable, "-m", "kdbench", "sweep", str(path), "--storage", postgres_url, "--quiet",
           "--threads", "1", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(WORKERS)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"worker failed:\n{out}\n{err}"

    # each worker prints one line per visit it ran: together, every planned visit exactly once
    ran = Counter(line.split("] ", 1)[1].split(":", 1)[0]
                  for out, _ in outs for line in out.splitlines() if line.startswith("["))
    runs = load_runs(postgres_url, study.name)
    assert len(runs) == planned_total(study) == 4 + 2 * 2
    assert runs["visit"].is_unique and set(runs["state"]) == {"complete"} and set(runs["attempt"]) == {1}
    assert sorted(ran) == sorted(runs["visit"]) and set(ran.values()) == {1}

    # Optuna's own API and CLI read the same database: one complete trial per search visit
    kd = optuna.load_study(study_name=study.name, storage=postgres_url)
    assert sorted(t.params["temperature"] for t in kd.trials) == [1.0, 2.0, 4.0]
    assert {t.state.name for t in kd.trials} == {"COMPLETE"}
    assert len(kd.trials) + 1 == len(plan_search(study))
    cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run([str(cli), "trials", "--study-name", f"{study.name}.ce", "--storage", postgres_url,
                          "-f", "json"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert [t["state"] for t in json.loads(out)] == ["COMPLETE"]

