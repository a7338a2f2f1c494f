"""The study file: a typed schema with every default and its unit, validation, overrides and a stable hash.

A study file (``studies/*.yaml``) names a dataset, a teacher recipe, a student recipe, the T × alpha
grid (and lr range) to search, the CE baseline and the finalists. Unknown keys are errors: a typo must
never fall back to a default. Every study key's default lives in this package, one module per section:
:mod:`~kdbench.config.data` (``data:``), :mod:`~kdbench.config.recipe` (``teacher:``, ``student:``),
:mod:`~kdbench.config.search` (``search:``, ``baseline:``, ``finalists:``) and :mod:`~kdbench.config.study`
(the whole study, its Optuna studies' names, parsing and loading). Reading the file (YAML, overrides, one-line
errors) is :mod:`kdbench.studyfile`; the hash's history is :mod:`kdbench.studyhash`; defaults that are not
study keys are :mod:`kdbench.defaults`.
"""

from kdbench.budget import Budget
from kdbench.config.base import is_geometric
from kdbench.config.data import DataConfig
from kdbench.config.launcher import LauncherConfig
from kdbench.config.recipe import Recipe, StudentConfig, TeacherConfig
from kdbench.config.search import BaselineConfig, FinalistsConfig, Range, SearchConfig
from kdbench.config.study import (
    OPTUNA_SUFFIXES,
    Study,
    load_study,
    optuna_study_name,
    optuna_study_names,
    parse_study,
    read_study_file,
)
from kdbench.studyfile import apply_overrides
from kdbench.studyhash import study_hash

__all__ = [
    "OPTUNA_SUFFIXES",
    "BaselineConfig",
    "Budget",
    "DataConfig",
    "FinalistsConfig",
    "LauncherConfig",
    "Range",
    "Recipe",
    "SearchConfig",
    "StudentConfig",
    "Study",
    "TeacherConfig",
    "apply_overrides",
    "is_geometric",
    "load_study",
    "optuna_study_name",
    "optuna_study_names",
    "parse_study",
    "read_study_file",
    "study_hash",
]
