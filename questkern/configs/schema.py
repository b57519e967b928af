"""Validate tuning tables against ``schema.json`` (a small JSON Schema subset) and
against the config dataclasses.

The validator implements exactly the keywords ``schema.json`` uses (type, const,
enum, required, properties, additionalProperties, items, minItems, minimum, maximum,
exclusiveMinimum, minLength, pattern, anyOf, local ``$ref``) so that questkern needs no
``jsonschema`` dependency; an unknown keyword in the schema is an error, so the two
cannot drift apart silently. Errors carry a JSON path (``$.entries[3].config``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

from questkern import config as C
from questkern.configs.keys import EntryKey

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
SCHEMA_VERSION = 1

_KNOWN = {
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minLength",
    "pattern",
    "anyOf",
    "$ref",
}


class TableError(ValueError):
    """A table file that cannot be used (unreadable, not JSON, or not valid)."""


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _type_ok(value, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    raise ValueError(f"schema.json uses unsupported type {t!r}")


def _validate(value, schema: dict, root: dict, path: str, errors: list[str]) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise ValueError(f"schema.json at {path} uses unsupported keyword(s) {sorted(unknown)}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"schema.json: only local $ref supported, got {ref!r}")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        _validate(value, target, root, path, errors)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            errors.append(f"{path}: expected {' or '.join(types)}, got {json.dumps(value)[:60]}")
            return
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {json.dumps(schema['const'])}, got {json.dumps(value)[:60]}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: expected one of {json.dumps(schema['enum'])}, got {json.dumps(value)[:60]}")
    if "anyOf" in schema:
        if not any(not _collect(value, s, root, path) for s in schema["anyOf"]):
            errors.append(f"{path}: matches none of the allowed forms")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: must be >= {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: must be <= {schema['maximum']}, got {value}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: must be > {schema['exclusiveMinimum']}, got {value}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: must have at least {schema['minLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: must have at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], root, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required field {name!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                _validate(item, props[name], root, f"{path}.{name}", errors)
            elif extra is False:
                errors.append(f"{path}: unexpected field {name!r}")
            elif isinstance(extra, dict):
                _validate(item, extra, root, f"{path}.{name}", errors)


def _collect(value, schema: dict, root: dict, path: str) -> list[str]:
    errors: list[str] = []
    _validate(value, schema, root, path, errors)
    return errors


def schema_errors(doc, definition: str | None = None) -> list[str]:
    """All schema violations of ``doc`` (the table schema, or ``$defs/<definition>``)."""
    root = load_schema()
    schema = root if definition is None else root["$defs"][definition]
    return _collect(doc, schema, root, "$")


def validate_table(doc, *, where: str = "table") -> None:
    """Schema, config fields (via the config dataclasses) and unique entry keys.

    Raises :class:`TableError` listing at most 5 problems.
    """
    errors = schema_errors(doc)
    if not errors:
        seen: dict[EntryKey, int] = {}
        for i, e in enumerate(doc["entries"]):
            try:
                C.CONFIG_TYPES[e["op"]].from_dict(e["config"])
                if e.get("default_config") is not None:
                    C.CONFIG_TYPES[e["op"]].from_dict(e["default_config"])
            except (TypeError, ValueError) as exc:
                errors.append(f"$.entries[{i}].config: {exc}")
            key = entry_key(e)
            if key in seen:
                errors.append(f"$.entries[{i}]: same key as $.entries[{seen[key]}] ({key.describe()})")
            seen[key] = i
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise TableError(f"{where} is not a valid questkern tuning table: " + "; ".join(errors[:5]) + more)


def validate_pareto(doc, *, where: str = "pareto file") -> None:
    errors = schema_errors(doc, "pareto_file")
    if errors:
        raise TableError(f"{where} is not a valid questkern Pareto file: " + "; ".join(errors[:5]))


def entry_key(e: dict) -> EntryKey:
    return EntryKey(
        e["op"],
        e["dtype"],
        e["head_dim"],
        e["group"],
        e["page_size"],
        e["seq_bucket"],
        e["batch_bucket"],
        e["budget"],
        e["gqa_mode"],
    )
