"""The written report: files, determinism, escaping, several studies, partial studies, headless Chromium."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest
from report_db import make_db

from kdbench.report.render import SECTIONS, write_report

pytestmark = pytest.mark.slow  # each render draws seven figures (seconds each on a busy CPU)

# a user-controlled string that must be escaped everywhere, and long, as real devices are: the page must wrap it
DEVICE = ('cpu <b>bold</b> & "quoted" (AMD EPYC 9654 96-Core Processor, x86_64, 2 of 192 threads, 128 GiB, '
          'torch 2.14.1+cpu, MKL 2025.1, OpenMP GNU 14)')
PAGE_WIDTH = 1280  # px: the report must fit a laptop window without horizontal scrolling
CAPTION_WORDS = 12  # a figure caption this short cannot say what to read from the figure
PROBE = """<script>
window.addEventListener("load", function () {
  var captions = Array.prototype.map.call(document.images, function (img) {
    var fig = img.closest("figure"), cap = fig && fig.querySelector("figcaption");
    return cap ? cap.textContent.trim().split(/\\s+/).filter(Boolean).length : 0;
  });
  document.body.setAttribute("data-probe", JSON.stringify({scroll: document.documentElement.scrollWidth,
    inner: window.innerWidth, captions: captions}));
});
</script>
</body>"""
TABLE_SUFFIXES = (".md", ".csv", ".tex")


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kd.db'}"
    make_db(url, "known", device=DEVICE)
    make_db(url, "other", kd_test={1: 0.85, 2: 0.86}, ce_test={1: 0.86, 2: 0.865})
    make_db(url, "searched", kd_test={}, ce_test={})  # teacher and search done, no finalist yet
    make_db(url, "partial", kd_test={}, ce_test={}, ce_val=[], teacher=False,
            kd_trials={(1.0, 0.5): [("running", None, 1e-3)], (2.0, 0.5): [("pruned", 0.7, 1e-3)]})
    return url


@pytest.fixture(scope="module")
def single(db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    write_report(db, ["known"], out)
    return out


def test_writes_every_table_and_figure(single: Path) -> None:
    names = {p.name for p in single.iterdir()}
    for stem in ("comparison", "grid"):
        assert {stem + s for s in TABLE_SUFFIXES} <= names
    for stem in ("comparison", "heatmap-val", "heatmap-diff", "effects", "learning-curves", "predictions",
                 "importances"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert "budget.png" not in names  # nothing at another budget, no two-epoch trial: left out, the text says so
    tex = (single / "comparison.tex").read_text()
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    assert "$95$\\%" in tex and re.search(r"(?<!\\)%", tex) is None  # a bare % would comment the rest out
    html = (single / "index.html").read_text()
    assert "Top-1 agreement with the teacher (cnn-m) on the test set: CE students " in html
    assert "(mean over n=5 seeds, sd " in html and "Classes KD moved most (KD − CE accuracy" in html
    assert {"fidelity.md", "fidelity.tex", "per-class.csv", "per-class.tex"} <= names
    assert "p (McNemar, 2 networks)" in (single / "comparison.md").read_text()
    csv = pd.read_csv(single / "comparison.csv").set_index("arm")
    assert csv.loc["KD student", "diff_mean"] == pytest.approx(0.013)
    assert csv.loc["KD student", "n"] == 5 and csv.loc["teacher", "parameters"] == 5000


@pytest.fixture(scope="module")
def several(db: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("several")
    write_report(db, ["known", "other"], out, pool=True)  # the pooled section's table compiles with the rest
    return out


OVERFULL = re.compile(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\)")


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is absent (make test installs Debian's texlive-latex-recommended)")
def test_every_tex_table_compiles_within_the_text_width(single: Path, several: Path, tmp_path: Path) -> None:
    """Each .tex table of a one-study and a two-study report, in a default article page, compiles with pdflatex
    and is at most 1 pt wider than the text (the ASCII-only output needs no Unicode set-up)."""
    tables = sorted(single.glob("*.tex")) + sorted(several.glob("*.tex"))
    assert {"comparison.tex", "grid.tex", "known-grid.tex", "other-grid.tex", "pool.tex"} <= {p.name for p in tables}
    for table in tables:
        tex = table.read_text()
        assert tex.isascii(), f"{table.name}: non-ASCII characters {sorted({c for c in tex if not c.isascii()})}"
        _compiles_within_the_text_width(table, tmp_path)


def _compiles_within_the_text_width(table: Path, tmp_path: Path) -> None:
    """pdflatex a default article page holding ``table``: no error, no Overfull \\hbox over 1 pt."""
    doc = tmp_path / f"{table.parent.name}-{table.stem}.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   f"{table.read_text()}\\end{{document}}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    log = doc.with_suffix(".log").read_text(errors="replace")
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert run.returncode == 0 and not errors, f"{table.name}: pdflatex failed: {errors or run.stdout[-2000:]}"
    too_wide = [float(x) for x in OVERFULL.findall(log)]
    assert all(x <= 1.0 for x in too_wide), f"{table.name}: wider than \\textwidth by {max(too_wide)} pt"


def test_tables_align_numbers_right(single: Path) -> None:
    md = (single / "comparison.md").read_text().splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    rule = dict(zip(header, (c.strip() for c in md[1].strip("|").split("|")), strict=True))
    assert rule["arm"].startswith(":") and not rule["arm"].endswith(":")
    for col in ("test acc (%)", "n", "KD − CE (pp)", "95% CI (pp)", "p (paired t)", "p (McNemar, 2 networks)"):
        assert rule[col].endswith(":") and not rule[col].startswith(":"), col
    tex = (single / "comparison.tex").read_text()
    assert "\\begin{tabular}{lrrrrrrrr}" in tex and "device:" in tex and "parameters" in tex
    assert "$91.00 \\pm 0.79$" in tex and "$\\alpha$" in tex


def test_same_database_same_bytes(db: str, single: Path, tmp_path: Path) -> None:
    write_report(db, ["known"], tmp_path)
    for p in sorted(single.iterdir()):
        assert (tmp_path / p.name).read_bytes() == p.read_bytes(), f"{p.name} differs between two renders"


def test_user_strings_are_escaped(single: Path) -> None:
    html = (single / "index.html").read_text()
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; &#34;quoted&#34;" in html
    assert r"\&" in (single / "comparison.tex").read_text()


def test_several_studies_share_one_table(db: str, several: Path) -> None:
    md = (several / "comparison.md").read_text()
    assert md.startswith("| study") and "| known " in md and "| other " in md
    assert {"known-heatmap-val.png", "other-heatmap-val.png", "known-grid.csv", "comparison.png"} <= {
        p.name for p in several.iterdir()}
    html = (several / "index.html").read_text()
    assert "known: KD helped" in html and "other: KD and CE could not be told apart at n=2" in html
    assert [f.name for f in write_report(db, ["known", "other"], fmt="md").frames] == ["known", "other"]


def test_partial_study_renders_what_exists(db: str, tmp_path: Path) -> None:
    write_report(db, ["partial"], tmp_path)
    html = (tmp_path / "index.html").read_text()
    assert "Partial study: what is missing" in html and "no complete CE baseline trial" in html
    assert "no complete finalists yet" in html and "cannot be compared yet" in html
    grid = (tmp_path / "grid.md").read_text()
    assert "running, n=1" in grid and "pruned, last 70.00, in epoch 2" in grid and "not run" in grid
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["comparison.png", "importances.png"]  # no empty
    # figure: no heatmaps or effects (no complete KD trial), learning curves (no finalist), predictions, calibration
    # (no logits), every trial (none complete, none with an epoch) or the budget section's (nothing at another
    # budget, no two-epoch trial): one sentence each instead
    assert "No heatmap: no complete KD trial yet." in html and "No main-effects figure: no complete KD cell" in html
    assert "Files: grid.md, .csv, .tex</p>" in html
    assert not (tmp_path / "budget.png").exists() and "No budget figure: no configuration was trained" in html
    assert not (tmp_path / "learning-curves.png").exists() and "No learning curves: no complete finalists yet." in html
    assert "No reliability diagram: there is nothing to draw" in html and "No trial figure: no search trial" in html


def test_one_evaluation_per_run_draws_no_curve(tmp_path: Path) -> None:
    """Finalists validated once (a 200-step run): a sentence instead of learning curves of one point each."""
    url = f"sqlite:///{tmp_path / 'kd.db'}"
    make_db(url, "once", epochs=1)
    write_report(url, ["once"], tmp_path / "out", load_images=False)
    html = (tmp_path / "out" / "index.html").read_text()
    assert not (tmp_path / "out" / "learning-curves.png").exists()
    assert ("No learning curves: one evaluation per run (validation only after the last step; student.eval_every "
            "gives a curve): no curve.") in html
    assert (tmp_path / "out" / "heatmap-val.png").exists() and (tmp_path / "out" / "trials.png").exists()


def test_a_study_without_finalists_renders_and_says_what_is_missing(db: str, tmp_path: Path) -> None:
    """Teacher, CE baseline and KD search done, no finalist yet: every section renders and says why it is empty."""
    rep = write_report(db, ["searched"], tmp_path)
    f = rep.frames[0]
    assert f.missing == ["no complete finalists yet: no test accuracies, comparison, fidelity or learning curves"]
    assert list(rep.comparison["arm"]) == ["teacher"] and f.seeds.empty and f.fidelity.seeds.empty
    html = (tmp_path / "index.html").read_text()
    assert "Partial study: what is missing" in html and "no complete finalists yet" in html
    assert "KD and CE cannot be compared yet: no complete finalists." in html
    assert "no seed has stored test predictions of both a complete CE and KD finalist yet" in html  # fidelity
    assert "No prediction grid: no seed with both a KD and a CE finalist yet." in html
    assert "Parameter importances not shown: 4 complete KD trial(s), fewer than the 50" in html
    assert "Calibration not computed: no stored test logits" in html and "Every trial" in html
    assert len(list(tmp_path.glob("*.png"))) == 6 and not (tmp_path / "fidelity.md").exists()  # no predictions
    assert "No configuration was\ntrained at another budget than the search's" in html
    assert "| teacher |" in (tmp_path / "comparison.md").read_text()
    if shutil.which("pdflatex") is not None:
        (tmp_path / "latex").mkdir()
        for table in sorted(tmp_path.glob("*.tex")):
            _compiles_within_the_text_width(table, tmp_path / "latex")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is absent (make test installs it)")
def test_index_html_loads_in_headless_chromium(single: Path) -> None:
    html = (single / "index.html").read_text()
    n_images = html.count("<img ")
    # 8: no reliability diagram (this study stored no logits: a sentence instead); self-contained
    assert n_images == 8 and "http://" not in html.replace("http://www.w3.org", "")
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", (single / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, "the page's load script did not run"
    assert loaded.groups() == (str(n_images), str(n_images)), f"images loaded: {loaded.group(0)}"
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", dom)
    assert "Comparison" in headings
    for key, title in SECTIONS.items():  # a study of Hinton's KD alone has no methods section
        assert (title.replace("&", "&amp;") in headings) == (key != "methods"), f"section {title!r}"
    # the same page with a probe that measures it, in a window of PAGE_WIDTH
    probed = single / "probe.html"
    probed.write_text(html.replace("</body>", PROBE))
    try:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
             f"--window-size={PAGE_WIDTH},900", "--dump-dom", probed.as_uri()],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        probed.unlink()
    probe = re.search(r'data-probe="([^"]*)"', dom)
    assert probe is not None, "the probe script did not run"
    page = json.loads(html_lib.unescape(probe.group(1)))
    assert page["inner"] == PAGE_WIDTH, page
    assert page["scroll"] <= PAGE_WIDTH, f"the page scrolls sideways: {page['scroll']} px wide at {PAGE_WIDTH} px"
    assert len(page["captions"]) == n_images
    assert all(words >= CAPTION_WORDS for words in page["captions"]), f"figure caption words: {page['captions']}"


def test_report_of_a_real_tiny_sweep(needs_fmnist: None, tiny_study_dict: dict, db_url: str, tmp_path: Path) -> None:
    from kdbench.config import parse_study
    from kdbench.sweep import run_sweep

    run_sweep(parse_study(tiny_study_dict), storage=db_url, cache_dir=tmp_path / "cache")
    db_file = Path(db_url.removeprefix("sqlite:///"))

    def content() -> list[str]:  # the database's rows and schema (in WAL mode the file's bytes change on a
        with closing(sqlite3.connect(db_file)) as conn:  # checkpoint, which is not a write of ours)
            return list(conn.iterdump())

    before = content()
    rep = write_report(db_url, ["tiny"], tmp_path / "out")
    assert content() == before  # a pure reader: nothing was trained or written
    f = rep.frames[0]
    assert f.missing == [] and f.paired.n == 2 and "n=2" in f.verdict
    assert f.predictions.images is not None and len(f.predictions.table) == 24 and f.predictions.seed == 1
    assert (f.predictions.table["teacher"] >= 0).all() and f.predictions.classes[9] == "Ankle boot"
    assert f.importances.note.startswith("not shown: 2 complete KD trial(s), fewer than the 50")
    assert list(rep.comparison["arm"]) == ["teacher", "CE student", "KD student"]
    assert f.curves.groupby("loss")["n"].min().to_dict() == {"ce": 2, "kd": 2}
    assert f.provenance["counts"].loc["all", "complete"] == 7


def test_a_replicated_grid_and_a_range_study_render(tmp_path: Path) -> None:
    from report_db import make_replicated_db

    url = f"sqlite:///{tmp_path / 'rep.db'}"
    make_replicated_db(url, "rep")
    make_replicated_db(url, "range", search={"temperature": {"low": 1, "high": 8, "log": True},
                                             "alpha": {"low": 0.1, "high": 0.9}, "replicates": None, "trials": 20})
    out = tmp_path / "rep"
    write_report(url, ["rep"], out, load_images=False)
    html = (out / "index.html").read_text()
    assert SECTIONS["effects"] in html and "reliability" in html and "after Holm" in html
    assert "Tuning budgets: KD: 4 cells × 2 lr × 3 seeds; CE: 2 lr × 3 seeds." in html
    effects_md = (out / "effects.md").read_text()
    assert "vs grid mean (pp)" in effects_md and "| T " in effects_md
    grid_md = (out / "grid.md").read_text()
    assert re.search(r"\d+\.\d\d, ±\d\.\d\d n=3, lr 0\.00[12]", grid_md), grid_md
    ranged = tmp_path / "range"
    write_report(url, ["range"], ranged, load_images=False)
    assert (ranged / "effects.png").stat().st_size > 0 and not (ranged / "effects.md").exists()


def test_links_in_the_output_folder_are_replaced_not_followed(db: str, tmp_path: Path) -> None:
    """A link placed where the report writes (index.html, a figure) is replaced by the report's file; the
    file it pointed to, outside the folder, is untouched."""
    out, outside = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    outside.write_text("keep me")
    for name in ("index.html", "comparison.png", "comparison.csv", ".kdbench-write-test"):
        (out / name).symlink_to(outside)
    write_report(db, ["known"], out)
    assert outside.read_text() == "keep me"
    for name in ("index.html", "comparison.png", "comparison.csv"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert oct((out / "index.html").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not list(out.glob(".*.tmp"))  # no temporary file left


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask
