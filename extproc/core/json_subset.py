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

Nesting is bounded (`MAX_DEPTH`); deeper documents count as valid. A schema is compiled once
into nodes (recursive `$ref`s included) and kept in a small cache keyed by its canonical JSON, so
a structured-output schema sent with every request is compiled once.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "first_error"]

MAX_DEPTH = 32
#: Schemas up to this size (canonical JSON) are kept compiled, 64 of them at most.
MAX_CACHED_BYTES = 64 * 1024
_NOTHING: Any = object()
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Node:
    """One compiled schema object: only the keywords it has."""

    __slots__ = (
        "all_of",
        "any_of",
        "const",
        "enum",
        "extra",
        "items",
        "kinds",
        "length",
        "no_bool",
        "one_of",
        "properties",
        "range",
        "required",
        "size",
        "types",
    )

    def __init__(self) -> None:
        self.types: tuple[str, ...] | None = None
        #: `types` as Python types for one isinstance; `no_bool`: True/False are no numbers
        self.kinds: tuple[type, ...] = ()
        self.no_bool = False
        self.enum: list[Any] | None = None
        self.const: Any = _NOTHING
        self.any_of: list[_Node] = []
        self.one_of: list[_Node] = []
        self.all_of: list[_Node] = []
        self.required: tuple[str, ...] = ()
        self.properties: dict[str, _Node] = {}
        #: additionalProperties: True (anything), False, or a schema
        self.extra: bool | _Node = True
        self.items: _Node | None = None
        self.length: tuple[float | None, float | None] | None = None
        self.range: tuple[float | None, float | None] | None = None
        self.size: tuple[float | None, float | None] | None = None


def _bounds(
    schema: dict[str, Any], low: str, high: str
) -> tuple[float | None, float | None] | None:
    pair = (_number(schema.get(low)), _number(schema.get(high)))
    return None if pair == (None, None) else pair


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root if isinstance(root, dict) else {}
        self.nodes: dict[int, _Node] = {}

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return schema
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                table = self.root.get(prefix[2:-1])
                target = table.get(ref[len(prefix) :]) if isinstance(table, dict) else None
                return target if isinstance(target, dict) else {}
        return {}

    def node(self, schema: Any) -> _Node:
        if not isinstance(schema, dict):
            return _Node()
        schema = self.resolve(schema)
        found = self.nodes.get(id(schema))
        if found is not None:
            return found
        node = self.nodes[id(schema)] = _Node()  # before the children: recursive refs
        kind = schema.get("type")
        if isinstance(kind, str):
            node.types = (kind,)
        elif isinstance(kind, list):
            node.types = tuple(t for t in kind if isinstance(t, str))
        if node.types is not None:
            _kinds(node, node.types)
        if isinstance(schema.get("enum"), list):
            node.enum = schema["enum"]
        node.const = schema.get("const", _NOTHING)
        for key, target in (("anyOf", node.any_of), ("oneOf", node.one_of), ("allOf", node.all_of)):
            if isinstance(schema.get(key), list):
                target.extend(self.node(branch) for branch in schema[key])
        if isinstance(schema.get("required"), list):
            node.required = tuple(n for n in schema["required"] if isinstance(n, str))
        if isinstance(schema.get("properties"), dict):
            node.properties = {k: self.node(v) for k, v in schema["properties"].items()}
        extra = schema.get("additionalProperties", True)
        node.extra = (
            False if extra is False else (self.node(extra) if isinstance(extra, dict) else True)
        )
        if isinstance(schema.get("items"), dict):
            node.items = self.node(schema["items"])
        node.length = _bounds(schema, "minLength", "maxLength")
        node.range = _bounds(schema, "minimum", "maximum")
        node.size = _bounds(schema, "minItems", "maxItems")
        return node


_PYTHON: dict[str, tuple[type, ...]] = {**_TYPES, "integer": (int,), "number": (int, float)}


def _kinds(node: _Node, types: tuple[str, ...]) -> None:
    if any(t not in _PYTHON for t in types):
        node.types = None  # an unknown type name: not judged
        return
    node.kinds = tuple(k for t in types for k in _PYTHON[t])
    node.no_bool = "boolean" not in types


@functools.lru_cache(maxsize=64)
def _compiled(canonical: bytes) -> _Node:
    schema = orjson.loads(canonical)
    return _Compiler(schema).node(schema)


def first_error(value: Any, schema: Any) -> str:
    """The first violation as `path: what` (path from `$`), or "" when `value` is valid."""
    if not isinstance(schema, dict):
        return ""
    try:
        canonical = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        canonical = b""
    if canonical and len(canonical) <= MAX_CACHED_BYTES:
        node = _compiled(canonical)
    else:  # a huge (or odd) schema is compiled for this call only, never kept
        node = _Compiler(schema).node(schema)
    error = _error(value, node, 0)
    return "$" + error if error else ""


def _error(value: Any, node: _Node, depth: int) -> str:
    """ "" or the violation as `<path below here>: what`; paths are built only on failure."""
    if depth > MAX_DEPTH:
        return ""
    types = node.types
    if types is not None and (
        not isinstance(value, node.kinds) or (node.no_bool and isinstance(value, bool))
    ):
        return f": not {types[0]}" if len(types) == 1 else f": not one of {'/'.join(types)}"
    if node.enum is not None and value not in node.enum:
        return ": not in enum"
    if node.const is not _NOTHING and value != node.const:
        return ": not the constant"
    if node.any_of or node.one_of or node.all_of:
        error = _combined(value, node, depth)
        if error:
            return error
    if isinstance(value, dict):
        return _object(value, node, depth)
    if isinstance(value, list):
        if node.size is not None:
            error = _out(len(value), node.size, "minItems", "maxItems", "items")
            if error:
                return error
        items = node.items
        if items is not None:
            for index, item in enumerate(value):
                error = _error(item, items, depth + 1)
                if error:
                    return f"[{index}]{error}"
        return ""
    if isinstance(value, str):
        return (
            ""
            if node.length is None
            else _out(len(value), node.length, "minLength", "maxLength", "length")
        )
    if node.range is not None and _number(value) is not None:
        return _out(value, node.range, "minimum", "maximum", "value")
    return ""


def _combined(value: Any, node: _Node, depth: int) -> str:
    if node.any_of and all(_error(value, b, depth + 1) for b in node.any_of):
        return ": matches no branch of anyOf"
    if node.one_of and all(_error(value, b, depth + 1) for b in node.one_of):
        return ": matches no branch of oneOf"
    for branch in node.all_of:
        error = _error(value, branch, depth + 1)
        if error:
            return error
    return ""


def _object(value: dict[str, Any], node: _Node, depth: int) -> str:
    for name in node.required:
        if name not in value:
            return f": missing {name}"
    properties, extra = node.properties, node.extra
    if extra is True and not properties:
        return ""
    for name, item in value.items():
        sub = properties.get(name)
        if sub is None:
            if extra is True:
                continue
            if extra is False:
                return f": unexpected {name}"
            sub = extra
        error = _error(item, sub, depth + 1)
        if error:
            return f".{name}{error}"
    return ""


def _out(
    measure: float,
    bounds: tuple[float | None, float | None],
    low_key: str,
    high_key: str,
    what: str,
) -> str:
    low, high = bounds
    if low is not None and measure < low:
        return f": {what} below {low_key} {low}"
    if high is not None and measure > high:
        return f": {what} above {high_key} {high}"
    return ""
