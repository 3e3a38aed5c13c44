"""JSON Schema validation that reports every error with its file position and a likely fix."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.config.yamlsrc import Document
from pipeline.errors import Problem

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed schema `schemas/<name>.schema.json`."""
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return data


def validate(doc: Document, schema_name: str) -> list[Problem]:
    """Return one Problem per schema violation in `doc`, in file order."""
    found = load_schema(schema_name)
    validator = jsonschema.validators.validator_for(found)(
        found
    )  # ours are 2020-12; server.json's is draft 7
    problems = [_problem(doc, err) for err in validator.iter_errors(doc.data)]
    return sorted(problems, key=lambda p: (p.line, p.column, p.path))


def _schema_of(err: jsonschema.ValidationError) -> dict[str, Any]:
    return err.schema if isinstance(err.schema, dict) else {}


def _problem(doc: Document, err: jsonschema.ValidationError) -> Problem:
    path = tuple(err.absolute_path)
    kind = err.validator
    if kind == "additionalProperties":
        extra = _extra_keys(err)
        if extra:
            allowed = ", ".join(sorted(_schema_of(err).get("properties", {})))
            return doc.problem(
                (*path, extra[0]),
                f"unknown key {extra[0]!r}",
                f"remove it or fix its spelling; allowed here: {allowed}",
                key=True,
            )
    schema = _schema_of(err)
    message = str(schema.get("x-message", err.message))  # a schema's own words for a rule it states
    if kind == "pattern" and "title" in schema:
        message = f"{err.instance!r} is not {schema['title']}"
    return doc.problem(path, message, _hint(err))


def _extra_keys(err: jsonschema.ValidationError) -> list[str]:
    known = set(_schema_of(err).get("properties", {}))
    instance = err.instance if isinstance(err.instance, dict) else {}
    return sorted(k for k in instance if k not in known)


def _hint(err: jsonschema.ValidationError) -> str:
    schema = _schema_of(err)
    kind = err.validator
    value: Any = err.validator_value
    if kind == "required":
        return "add the missing key"
    if kind == "type":
        if err.validator_value == "string" and isinstance(err.instance, int | float):
            return f'quote it: "{err.instance}"'
        return f"use a value of type {err.validator_value}"
    if kind == "enum":
        return "use one of: " + ", ".join(repr(v) for v in value)
    if kind in ("pattern", "not") and "x-hint" in schema:  # a schema's own hint for values people get wrong
        return str(schema["x-hint"])
    if kind == "pattern":
        return f"write {schema['title']}" if "title" in schema else f"match the pattern {err.validator_value}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"the {kind} is {err.validator_value}"
    if kind in ("minLength", "maxLength", "minItems", "maxItems"):
        return f"the {kind} is {err.validator_value}"
    if kind == "uniqueItems":
        return "remove the repeated entry"
    return str(schema.get("description", ""))
