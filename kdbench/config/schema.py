"""The study file's JSON Schema (``kdbench schema``), generated from the typed schema of this package.

What a key may hold is said once, on its field: its type, its default, its description and unit (the field's
docstring), and its bounds and allowed values, Field constraints where pydantic checks them and ``json_schema_extra``
where a validator does (``search.BOUNDS``, the method registry); unknown keys are ``additionalProperties: false``
(every section forbids extra keys). Rules that span several keys (``low <= high``, a method's equal grid size,
``weights`` only for models outside the zoo) are validation's alone: the schema accepts a superset of valid studies,
and never rejects one that validates.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from kdbench.config.study import Study

__all__ = ["SCHEMA_DIALECT", "study_json_schema", "study_schema_text"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _FactoryDefaults(GenerateJsonSchema):
    """pydantic leaves out the defaults made by a ``default_factory`` (T, alpha, lr, each section); show them."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return schema.get("default", NoDefault)


def study_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a study file, as ``kdbench schema`` prints it.

    Returns:
        The schema as a dict: every key's type, default, description (with its unit) and allowed values.
    """
    schema = Study.model_json_schema(schema_generator=_FactoryDefaults)
    schema["title"] = "kdbench study"
    return _one_line_descriptions({"$schema": SCHEMA_DIALECT, **schema})


def _one_line_descriptions(node: Any) -> Any:
    """Docstrings wrapped at the source's width read as one line per paragraph (an editor's hover wraps them)."""
    if isinstance(node, dict):
        return {k: re.sub(r"(?<!\n)\n(?!\n)", " ", v) if k == "description" and isinstance(v, str)
                else _one_line_descriptions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_one_line_descriptions(v) for v in node]
    return node


def study_schema_text() -> str:
    """:func:`study_json_schema` as indented JSON text, ending in a newline."""
    return json.dumps(study_json_schema(), indent=2, ensure_ascii=False) + "\n"
