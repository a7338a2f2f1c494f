"""The `kdbench` command: parse, call one library function, turn known errors into one-line messages."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from kdbench.defaults import DEFAULT_STORAGE
from kdbench.errors import ConfigError, KdbenchError, Terminated, request_termination

F = TypeVar("F", bound=Callable[..., Any])

STORAGE_HELP = "SQLAlchemy URL of the results database (Optuna's tables and kdbench's)."
LOG_HELP = ("Also log to these experiment trackers: mlflow, tensorboard (comma-separated or repeated; see "
            "docs/trackers.md).")


def _fail(message: str) -> None:
    click.echo(f"kdbench: error: {message}", err=True)
    sys.exit(2)


def _handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KdbenchError as exc:
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except KeyboardInterrupt as exc:
            how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"\nkdbench: {how}; a trial in progress, if any, was recorded as interrupted. "
                       "Run the same command again to resume.", err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)  # 128 + the signal, as shells report it

    return wrapper  # type: ignore[return-value]


def _on_sigterm(_signum: int, _frame: Any) -> None:
    request_termination()  # raises Terminated here, or where a write held whole ends


def _setup_torch(threads: int | None, device: str) -> Any:
    from kdbench.train import setup_device

    return setup_device(device, threads if threads is not None else max(1, os.cpu_count() or 1))


def _study_options(fn: F) -> F:
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override a study key, e.g. --set student.epochs=1 (repeatable).")(fn)
    fn = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1 or auto.")(fn)
    fn = click.option("--threads", type=click.IntRange(min=1), default=None,
                      help="CPU threads for torch (default: all cores).")(fn)
    fn = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                      help="Teacher cache folder (default $KDBENCH_CACHE or ./.kdbench-cache).")(fn)
    return fn


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    from kdbench.provenance import kdbench_commit

    click.echo(f"kdbench {version('kdbench')} (commit {kdbench_commit()})")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print kdbench's version and git commit, then exit.")
@click.option("-v", "--verbose", is_flag=True, help="Log what kdbench does.")
def main(verbose: bool) -> None:
    """kdbench: does distillation help your small model, and with which T and alpha?

    \b
    kdbench teacher studies/fashion-mnist-quick.yaml   # train and cache the teacher
    kdbench sweep studies/fashion-mnist-quick.yaml     # baseline, T x alpha search, finalists
    kdbench show fashion-mnist-quick                   # best configurations and counts
    kdbench schema -o kdbench.schema.json              # the study file's JSON Schema, for your editor
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@_study_options
@_handle_errors
def teacher(study_file: str, overrides: tuple[str, ...], device: str, threads: int | None,
            cache_dir: str | None) -> None:
    """Train (or load from the cache) the study's teacher and print its accuracy.

    Example: kdbench teacher studies/fashion-mnist-quick.yaml
    """
    from kdbench.config import load_study
    from kdbench.progress import sweep_display
    from kdbench.teacher import prepare_teacher

    study = load_study(study_file, overrides)
    dev = _setup_torch(threads, device)
    with sweep_display(quiet=False, total_epochs=study.teacher.epochs or 1) as events:
        t = prepare_teacher(study, device=dev, cache_dir=cache_dir, enforce_floor=False,
                            on_epoch=lambda r: events.on_epoch(r, study.teacher.epochs or 1))
    source = "cache" if t.from_cache else ("checkpoint" if study.teacher.checkpoint else "trained")
    click.echo(f"teacher {study.teacher.model} ({t.parameters:,} parameters, {source}, key {t.key}): "
               f"val {t.val_acc:.2%}  test {t.test_acc:.2%}  in {t.seconds:.1f} s  [{t.cache_dir}]")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False), required=False)
@_study_options
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, envvar="KDBENCH_STORAGE",
              help=STORAGE_HELP + " Also read from $KDBENCH_STORAGE (how --workers passes it: a password never "
              "appears in a process list).")
@click.option("--join", metavar="NAME", help="Instead of a study file: run the study NAME stored in --storage "
              "(kdbench ls lists them), as a worker on any machine with the study's code.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers sharing the study, started by --launcher (local: torch threads each: cores // N).")
@click.option("--launcher", type=click.Choice(["local", "slurm", "ray"]), default=None,
              help="Who starts the workers: local processes (default), SLURM through submitit, or Ray tasks; "
              "these and the options below override the study's launcher: section (docs/cluster.md).")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=None, help="slurm/ray: GPUs per worker.")
@click.option("--partition", default=None, help="slurm: the partition.")
@click.option("--time-min", type=click.IntRange(min=1), default=None, help="slurm: each task's time limit, minutes.")
@click.option("--sbatch", multiple=True, metavar="KEY=VALUE", help="slurm: another sbatch option (repeatable).")
@click.option("--ray-address", default=None, help="ray: the cluster to join (default: one started here).")
@click.option("--quiet", is_flag=True, help="No live progress lines; one line per finished trial and teacher epoch "
              "(the default when standard output is not a terminal).")
@click.option("--replace", is_flag=True,
              help="Delete a stored study of the same name (its results too), once the new input is checked.")
@click.option("--max-visits", type=click.IntRange(min=1), default=None,
              help="Stop after this many trials (per worker).")
@click.option("--optuna-proxy", metavar="HOST:PORT", envvar="KDBENCH_OPTUNA_PROXY", default=None,
              help="Send Optuna's calls through `kdbench storage-proxy` there (kdbench's own go to --storage, the "
              "same database).")
@click.option("--as-worker", is_flag=True, hidden=True, help="Started by --workers: no summary at the end.")
@click.option("--log", "log_to", multiple=True, metavar="TRACKERS", help=LOG_HELP + " Added to the study's log:.")
@_handle_errors
def sweep(study_file: str | None, overrides: tuple[str, ...], device: str, threads: int | None,
          cache_dir: str | None, storage: str, join: str | None, workers: int, quiet: bool, replace: bool,
          max_visits: int | None, optuna_proxy: str | None, as_worker: bool, log_to: tuple[str, ...],
          **launcher: Any) -> None:
    """Run a study: teacher, CE baseline, T x alpha search, finalists. Re-run to resume; run it on
    several processes (--workers N), machines (--join NAME) or a cluster (--launcher) against one --storage.

    Example: kdbench sweep studies/fashion-mnist-quick.yaml --workers 2
    """
    import optuna

    from kdbench.config import load_study
    from kdbench.join import join_study
    from kdbench.launch import launch_workers, with_launcher
    from kdbench.progress import sweep_display
    from kdbench.store import Store
    from kdbench.sweep import run_sweep, work_sweep
    from kdbench.workers import worker_threads

    if not logging.getLogger().isEnabledFor(logging.INFO):  # Optuna's per-trial info lines only with -v
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)  # a scheduler's SIGTERM ends the trial as Ctrl-C does
    if (study_file is None) == (join is None) or (join and replace):
        raise ConfigError("give a study file or --join NAME, one of them (--replace only with a study file): "
                          "kdbench sweep STUDY_FILE, or kdbench sweep --join NAME --storage URL")
    stored = Store.open(storage, create=False, optuna_proxy=optuna_proxy) if join else None
    def read(ov: tuple[str, ...]) -> Any:
        return join_study(stored, join, ov) if stored and join else load_study(str(study_file), ov)

    study = read(overrides)
    from kdbench.trackers import check_trackers, parse_log_option

    if log_to:  # as an override, which --workers passes on to each worker
        overrides = (*overrides, "log=" + json.dumps([*study.log, *parse_log_option(log_to)]))
        study = read(overrides)
    check_trackers(study.log)
    study = with_launcher(study, name=launcher.pop("launcher"), **launcher)
    dev = _setup_torch(worker_threads(1, threads) if workers == 1 else threads, device)
    store = stored or Store.open(storage, optuna_proxy=optuna_proxy)
    if optuna_proxy:  # how --workers and the launchers pass it on
        os.environ["KDBENCH_OPTUNA_PROXY"] = optuna_proxy
    quiet = quiet or not sys.stdout.isatty()  # a log file or a pipe: plain lines, not live ones that print at the end
    with sweep_display(quiet, study.student.epochs if study.student.steps is None else None) as events:
        if as_worker and workers == 1:  # started by --workers: no summary, hence no pandas (~95 MiB) while training
            work_sweep(study, storage=store, device=dev, cache_dir=cache_dir, events=events, max_visits=max_visits,
                       replace=replace)
            return
        if workers == 1 and study.launcher.name == "local":  # --replace drops the stored study once input is checked
            summary = run_sweep(study, storage=store, device=dev, cache_dir=cache_dir, events=events,
                                max_visits=max_visits, replace=replace)
        else:
            launch_workers(study, study_file=study_file, overrides=overrides, workers=workers, store=store,
                           storage_url=storage, device=device, here=dev, events=events, threads=threads,
                           cache_dir=cache_dir, max_visits=max_visits, replace=replace)
            summary = store.finalist_summary(study.name)
    if as_worker:
        return
    from kdbench.console import print_counts, print_evidence, print_next, print_summary, search_evidence_of

    print_counts(store, study.name)
    print_evidence(search_evidence_of(study, store.runs(study.name)).sentences, study.name)
    print_summary(store, study.name, summary, study)
    print_next(study.name, store.url, click.get_current_context().get_parameter_source("storage"))


@main.command(name="ls")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, help=STORAGE_HELP)
@_handle_errors
def ls_(storage: str) -> None:
    """List the studies in a database with their run counts.

    Example: kdbench ls --storage sqlite:///kdbench.db
    """
    from kdbench.store import Store

    store = Store.open(storage, create=False)
    df = store.studies()
    if df.empty:
        click.echo(f"no studies in {store.url}")
        return
    cols = [c for c in ("name", "config_hash", "created", "complete", "pruned", "failed", "running",
                        "interrupted") if c in df]
    click.echo(df[cols].to_string(index=False))


@main.command()
@click.argument("study_name")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, help=STORAGE_HELP)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Configurations to list.")
@_handle_errors
def show(study_name: str, storage: str, top: int) -> None:
    """Print a study's best configurations (by validation accuracy), counts and finalists.

    Example: kdbench show fashion-mnist-quick
    """
    from kdbench.console import print_show
    from kdbench.store import Store

    print_show(Store.open(storage, create=False), study_name, top)


@main.command()
@click.argument("studies", nargs=-1, required=True)
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, help=STORAGE_HELP)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default reports/<study>/, or reports/<a>+<b>/ for several studies).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True,
              help="html: write figures, tables and index.html; md: print the comparison table only.")
@click.option("--log", "log_to", multiple=True, metavar="TRACKERS", help=LOG_HELP + " MLflow: one run per study "
              "holding the report's files as artifacts.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where the trackers' local files are (default $KDBENCH_CACHE or ./.kdbench-cache).")
@click.option("--pool", is_flag=True, help="Pool two or more studies of the same pair (retests, other teachers or "
              "splits) into one random-effects KD − CE estimate with its heterogeneity and a forest plot.")
@_handle_errors
def report(studies: tuple[str, ...], storage: str, out: str | None, fmt: str, log_to: tuple[str, ...],
           cache_dir: str | None, pool: bool) -> None:
    """Write a study's report (heatmaps, CE comparison, curves, predictions, provenance) from the
    database alone; several studies share one comparison table and figure. Never trains.

    Example: kdbench report fashion-mnist-quick --storage sqlite:///kdbench.db
    Pooled with its retest: kdbench report fashion-mnist-quick fashion-mnist-quick-retest --pool
    """
    from kdbench.report import write_report
    from kdbench.store import Store
    from kdbench.trackers import check_trackers, parse_log_option

    trackers = parse_log_option(log_to)
    if trackers and fmt != "html":
        raise ConfigError("--log logs the report's files, and --format md writes none; use --format html")
    check_trackers(trackers)
    store = Store.open(storage, create=False)
    rep = write_report(store, list(studies), out, fmt=fmt, pool=pool)
    if trackers:
        from kdbench.teacher import open_cache_dir
        from kdbench.trackers import log_report

        log_report(rep, trackers, open_cache_dir(cache_dir), store.url, on_warning=click.echo)
    if fmt == "md":
        click.echo(rep.markdown, nl=False)
        return
    for sf in rep.frames:
        click.echo(f"{sf.name}: {sf.verdict}")
    if rep.pooled is not None:
        click.echo(f"pooled: {rep.pooled.sentence}")
    click.echo(f"report written to {rep.out}/index.html ({len(rep.files)} files)")


@main.command(name="storage-proxy")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, help=STORAGE_HELP)
@click.option("--host", default="0.0.0.0", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="TCP port.")
@_handle_errors
def storage_proxy(storage: str, host: str, port: int) -> None:
    """Serve the database's Optuna storage to many workers (Optuna's gRPC proxy) until Ctrl-C or SIGTERM.

    Example: kdbench storage-proxy --storage postgresql+psycopg://u@db/kd --port 13000, then on each node
    kdbench sweep STUDY --storage postgresql+psycopg://u@db/kd --optuna-proxy proxyhost:13000
    """
    from kdbench.store import Store
    from kdbench.store.proxy import serve

    store = Store.open(storage)
    serve(store, host, port, on_ready=lambda: click.echo(f"Optuna storage proxy for {store.url} on {host}:{port}"))
    click.echo("Optuna storage proxy stopped")


@main.command()
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Write the schema to this file instead of standard output.")
def schema(out: str | None) -> None:
    """Print the study file's JSON Schema: every key's type, default, unit and allowed values; unknown keys refused.

    Point your editor's YAML extension at it with a first line `# yaml-language-server: $schema=kdbench.schema.json`.

    Example: kdbench schema -o kdbench.schema.json
    """
    from kdbench.config.schema import study_schema_text

    text = study_schema_text()
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        _fail(f"{out}: cannot write the schema ({exc.strerror}); give a writable file to --out")
    click.echo(f"schema written to {out}", err=True)
