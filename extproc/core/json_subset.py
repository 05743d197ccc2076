"""A small JSON Schema validator for the confidence gate (`response_format: json_schema`).

Pure and bounded. It checks the subset structured-output schemas use in practice and says
"valid" for every keyword it does not know (a gate must not escalate on a schema feature it
cannot judge):

- `type` (one name or a list: object, array, string, number, integer, boolean, null)
- `enum`, `const`
- objects: `properties`, `required`, `additionalProperties` (false or a schema)
- arrays: `items` (one schema), `minItems`, `maxItems`
- strings: `minLength`, `maxLength`; numbers: `minimum`, `maximum`
- `anyOf`, `oneOf` (at least one branch valid), `allOf`
- local `$ref` of the form `#/$defs/name` or `#/definitions/name`

Nesting is bounded (`MAX_DEPTH`); deeper documents count as valid.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_DEPTH", "first_error"]

MAX_DEPTH = 32

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    kinds = _TYPES.get(name)
    if kinds is not None:
        return isinstance(value, kinds)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True  # an unknown type name is not judged


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            table = root.get(prefix[2:-1])
            target = table.get(ref[len(prefix) :]) if isinstance(table, dict) else None
            return target if isinstance(target, dict) else {}
    return {}


def first_error(value: Any, schema: Any) -> str:
    """The first violation as `path: what` (path from `$`), or "" when `value` is valid."""
    error = _error(value, schema, schema, 0)
    return "$" + error if error else ""


def _error(value: Any, schema: Any, top: Any, depth: int) -> str:
    """ "" or the violation as `<path below here>: what`; paths are built only on failure."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return ""
    if "$ref" in schema and isinstance(top, dict):
        schema = _resolve(schema, top)
    expected = schema.get("type")
    if expected is not None:
        if isinstance(expected, str):
            if not _is_type(value, expected):
                return f": not {expected}"
        elif isinstance(expected, list) and not any(
            _is_type(value, t) for t in expected if isinstance(t, str)
        ):
            return f": not one of {'/'.join(map(str, expected))}"
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        return ": not in enum"
    if "const" in schema and value != schema["const"]:
        return ": not the constant"
    if "anyOf" in schema or "oneOf" in schema or "allOf" in schema:
        error = _combinators(value, schema, top, depth)
        if error:
            return error
    if isinstance(value, dict):
        return _object(value, schema, top, depth)
    if isinstance(value, list):
        return _array(value, schema, top, depth)
    if isinstance(value, str):
        if "minLength" in schema or "maxLength" in schema:
            return _bounds(len(value), schema, "minLength", "maxLength", "length")
        return ""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and ("minimum" in schema or "maximum" in schema)
    ):
        return _bounds(value, schema, "minimum", "maximum", "value")
    return ""


def _combinators(value: Any, schema: dict[str, Any], top: Any, depth: int) -> str:
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if (
            isinstance(branches, list)
            and branches
            and all(_error(value, b, top, depth + 1) for b in branches)
        ):
            return f": matches no branch of {key}"
    branches = schema.get("allOf")
    if isinstance(branches, list):
        for branch in branches:
            error = _error(value, branch, top, depth + 1)
            if error:
                return error
    return ""


def _object(value: dict[str, Any], schema: dict[str, Any], top: Any, depth: int) -> str:
    required = schema.get("required")
    if isinstance(required, list):
        for name in required:
            if isinstance(name, str) and name not in value:
                return f": missing {name}"
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    extra = schema.get("additionalProperties", True)
    if extra is True and not properties:
        return ""
    for name, item in value.items():
        sub = properties.get(name)
        if sub is None:
            if extra is False:
                return f": unexpected {name}"
            sub = extra
        error = _error(item, sub, top, depth + 1)
        if error:
            return f".{name}{error}"
    return ""


def _array(value: list[Any], schema: dict[str, Any], top: Any, depth: int) -> str:
    error = _bounds(len(value), schema, "minItems", "maxItems", "items")
    if error:
        return error
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            error = _error(item, items, top, depth + 1)
            if error:
                return f"[{index}]{error}"
    return ""


def _bounds(measure: float, schema: dict[str, Any], low_key: str, high_key: str, what: str) -> str:
    low, high = schema.get(low_key), schema.get(high_key)
    if isinstance(low, int | float) and not isinstance(low, bool) and measure < low:
        return f": {what} below {low_key} {low}"
    if isinstance(high, int | float) and not isinstance(high, bool) and measure > high:
        return f": {what} above {high_key} {high}"
    return ""
