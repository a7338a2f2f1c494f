"""The docs build's hook (mkdocs.yml ``hooks:``): the generated study reference must be current, and the pages may
show files of the repository (a report's figures, the notebook) by their path from ``docs/``, ``../reports/...``,
which reads right on GitHub too: those files are added to the site and the links pointed at them. The docstrings'
Sphinx roles (``:func:`x` ``) render as the code they name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
_OUTSIDE = re.compile(r"\]\(\.\./((?:reports|examples)/[^)#\s]+)\)")
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_pre_build(config: Any) -> None:
    from kdbench.config.reference import REFERENCE_PAGE, study_reference

    page = REPO / REFERENCE_PAGE
    if not page.is_file() or page.read_text(encoding="utf-8") != study_reference():
        raise PluginError(f"{REFERENCE_PAGE} is stale: run python -m kdbench.config.reference")


def on_files(files: Files, config: Any) -> Files:
    for md in Path(config["docs_dir"]).glob("*.md"):
        for rel in _OUTSIDE.findall(md.read_text(encoding="utf-8")):
            if files.get_file_from_path(rel) is None and (REPO / rel).is_file():
                files.append(File.generated(config, rel, abs_src_path=str(REPO / rel)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return _OUTSIDE.sub(r"](\1)", markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    return _ROLE.sub("", html)
