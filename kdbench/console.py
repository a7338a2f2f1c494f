"""What the CLI prints about a stored study: the sweep's closing summary and `kdbench show`, as plain lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from kdbench.config import Study


def print_next(name: str, shown: str, source: click.core.ParameterSource | None) -> None:
    """The commands that read what the sweep stored, on the same database: a URL from $KDBENCH_STORAGE stays
    a reference to it, and one given with --storage is shown with its password masked."""
    import shlex

    from kdbench.report.cost import dashboard_command

    url = '"$KDBENCH_STORAGE"' if source is click.core.ParameterSource.ENVIRONMENT else shlex.quote(shown)
    storage = "" if source is click.core.ParameterSource.DEFAULT else f" --storage {url}"
    click.echo(f"next: kdbench report {shlex.quote(name)}{storage}   # writes reports/{name}/index.html\n"
               f"      {dashboard_command(url)}   # Optuna's dashboard on the same database "
               "(pip install optuna-dashboard)")


def print_counts(store: Any, name: str) -> None:
    runs = store.runs(name)
    counts = runs["state"].value_counts()
    text = ", ".join(f"{int(n)} {state}" for state, n in counts.items())
    click.echo(f"{name}: {len(runs)} runs ({text}); failed and interrupted attempts: kdbench show {name}")


def search_evidence_of(study: Study, runs: Any) -> Any:
    """The search's evidence from the study's config and runs alone (not the report's other reads: no
    epochs, predictions or Optuna importances), at the budget finalists are chosen at."""
    from kdbench.report.budget import main_runs
    from kdbench.report.grid import search_evidence

    return search_evidence(study, main_runs(runs, study))


def cell_text(c: Any) -> str:
    if c["ci_half"] != c["ci_half"]:  # one seed (or no spread): a value, not an interval
        return f"{100 * c['mean']:.2f}% (n={int(c['n'])}, no interval) at lr {c['best_lr']:.3g}"
    return f"{100 * c['mean']:.2f}% ± {100 * c['ci_half']:.2f} (95% CI, n={int(c['n'])}) at lr {c['best_lr']:.3g}"


def print_evidence(sentences: list[str], name: str) -> None:
    """The search's plain sentences: main effects, reliability, cells above CE after Holm, budgets."""
    if sentences:
        click.echo(f"{name}: what the search says (validation accuracy):\n" +
                   "\n".join(f"  - {line}" for line in sentences))


def print_transfer(name: str, study: Study, runs: Any) -> None:
    """The transfer check's sentence per method, when finalists trained longer than the search or probes ran."""
    from kdbench.report.budget import transfers
    from kdbench.report.methods import arm_label

    for t in transfers(runs, study, study.search.methods):
        click.echo(f"{name}: {arm_label(t.method)}: {t.sentence}")


def print_summary(store: Any, name: str, summary: Any, study: Study) -> None:
    from kdbench.report.budget import budget_labels
    from kdbench.report.methods import arm_label
    from kdbench.store import run_values

    at = budget_labels(study).finalists
    teacher = store.study_teacher(name)
    if teacher is not None:
        click.echo(f"{name}: teacher {teacher.model}: test {teacher.test_acc:.2%} (val {teacher.val_acc:.2%}, "
                   f"{teacher.parameters:,} parameters)")
    if summary.empty:
        click.echo(f"{name}: no finalists yet (run kdbench sweep to finish the study)")
        return
    click.echo(f"{name}: finalists trained {at}, test accuracy over seeds (storage {store.url})")
    for _, r in summary.iterrows():
        values = run_values(r)
        lr = values.pop("lr")
        values.pop("label_smoothing", None)  # CE+LS's, said in its label
        cfg = "".join(f"{'T' if k == 'temperature' else k}={v:g} " for k, v in values.items()) + f"lr={lr:.3g}"
        runs = int(r["runs"])
        if r["test_mean"] != r["test_mean"]:
            test = f"no test accuracy stored for its {runs} complete run{'s' if runs != 1 else ''}"
        elif r["test_sd"] == r["test_sd"]:
            test = f"test {r['test_mean']:.2%} ± {r['test_sd']:.2%} (sd, n={int(r['n'])})"
        else:
            test = f"test {r['test_mean']:.2%} (n={int(r['n'])}, no spread)"
        if 0 < r["n"] < runs:
            test += f"; {runs - int(r['n'])} complete run(s) stored no test accuracy"
        click.echo(f"  best {arm_label(r['loss'], r['params'])} #{int(r['rank']) + 1}: {cfg}: {test}")


def print_show(store: Any, study_name: str, top: int) -> None:
    """`kdbench show`: counts by kind and state, the best cells against CE, the search's sentences, finalists."""
    from kdbench.report.methods import arm_label

    runs = store.runs(study_name)
    study = store.study_config(study_name)  # a damaged stored config: one line naming it
    counts = runs.assign(kind=runs["kind"].map(arm_label)).groupby(["kind", "state"]).size().unstack(fill_value=0)
    click.echo(f"study {study_name} in {store.url}\n\nruns by kind and state:\n{counts.to_string()}\n")
    evidence = search_evidence_of(study, runs)
    cells = evidence.cells.cells.dropna(subset=["mean"])
    if not cells.empty:
        deltas = evidence.deltas.set_index(["temperature", "alpha"])
        lines = []
        for _, c in cells[cells["stage"] == "kd"].nlargest(top, "mean").iterrows():
            d = deltas.loc[(c["temperature"], c["alpha"])] if (c["temperature"], c["alpha"]) in deltas.index else None
            if d is None or d["mean"] != d["mean"]:
                vs = "; vs CE: no CE run on the same seeds yet"
            else:
                ci = (f"(n={int(d['n'])}, no interval)" if d["n"] < 2 else
                      "(no CI: the same difference on every seed)" if d["ci_low"] != d["ci_low"]
                      else f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]")
                vs = f"; vs CE {100 * d['mean']:+.2f} pp {ci}" + (" *" if d["holm_above_zero"] else "")
            lines.append(f"  T={c['temperature']:g} alpha={c['alpha']:g}: {cell_text(c)}{vs}")
        for _, c in cells[cells["stage"] == "ce"].iterrows():
            lines.append(f"  CE: {cell_text(c)}")
        from kdbench.report.budget import budget_labels

        at = budget_labels(study).selection
        click.echo(f"best cells (validation accuracy at {at}, mean over seeds at the cell's best lr; * above CE "
                   "after Holm):\n" + "\n".join(lines) + "\n")
    print_evidence(evidence.sentences, study_name)
    print_summary(store, study_name, store.finalist_summary(study_name), study)
    print_transfer(study_name, study, runs)
