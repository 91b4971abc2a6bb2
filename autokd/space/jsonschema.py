"""The JSON Schema of a space file, for editors and other tools: ``autokd schema`` prints it, and
``schema/space.schema.json`` keeps a copy that the example spaces point at (``# yaml-language-server: $schema=...``).

It declares draft-07: it uses nothing later (``definitions``, ``if``/``then``, only annotations beside a ``$ref``),
draft-07 is what yaml-language-server (VS Code's YAML extension and the editors on the same server) supported before
its 1.20 added 2019-09 and 2020-12, and read as 2020-12 it means the same (a test checks). yaml-language-server
1.15.0 and 2.0.0 both validate, hover and complete the example spaces with it.

It starts from :meth:`Space.model_json_schema` and mends what pydantic cannot say for this schema:

- a searchable field (a fixed value | ``{choices: [...]}`` | ``{low:, high:, step:?, log:?}``, chosen by a callable
  discriminator) becomes a ``oneOf`` of exactly those forms, written out per field so that each form carries the
  field's own limits; a categorical field has no range form at all (pydantic's ``NotARange`` member, which only
  exists to give one clear error, would otherwise be an object schema that accepts anything);
- the single-value rules of the cross-field checks that a schema can say: choices non-empty and distinct, the
  field's interval (:data:`~autokd.space.checks.BOUNDS`), supported bit widths, odd kernel sizes, ``step > 0``,
  a log range with ``low > 0`` and no step, distinct objectives.

What it cannot say (``low < high``, rules between fields, registered families, memory) stays with
``autokd validate``. Its types are strict where pydantic coerces (``epochs: "3"`` is flagged in an editor,
accepted by autokd).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from autokd.space.checks import BOUNDS, QUANT_BITS
from autokd.space.schema import Space

SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_ID = "urn:autokd:space:1"
SCHEMA_PATH = "schema/space.schema.json"  # the copy kept in the repository, relative to its root
REGENERATE = f"autokd schema -o {SCHEMA_PATH}"

_SEARCHABLE = "Searchable: a fixed value, {choices: [...]} or {low:, high:, step:?, log:?}."
_CATEGORICAL = "Searchable: a fixed value or {choices: [...]}."

# JSON Schema keywords that every candidate value (fixed value, each choice) of a field must meet.
_VALUE_RULES: dict[str, dict[str, Any]] = {
    "compress.bits": {"enum": list(QUANT_BITS)},
    "model.kernel_size": {"not": {"multipleOf": 2}},
}
# Keywords for the range form of a field (its ends, its step).
_RANGE_RULES: dict[str, dict[str, Any]] = {
    # every value of the range must be a supported bit width: the contiguous ones are 2-8
    "compress.bits": {"properties": {"low": {"minimum": 2, "maximum": 8}, "high": {"minimum": 2, "maximum": 8}}},
    # every value must be odd: an odd low and an even step
    "model.kernel_size": {"required": ["step"], "properties": {"low": {"not": {"multipleOf": 2}},
                                                               "step": {"type": "integer", "multipleOf": 2}}},
}
# Keywords added to plain (not searchable) fields.
_FIELD_RULES: dict[str, dict[str, Any]] = {
    "search.objectives": {"uniqueItems": True},
}


_REFS = "#/definitions/"


def _interval(path: str) -> dict[str, Any]:
    if path not in BOUNDS:
        return {}
    lo, hi, lo_in, hi_in = BOUNDS[path]
    return {"minimum" if lo_in else "exclusiveMinimum": lo, "maximum" if hi_in else "exclusiveMaximum": hi}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif key == "required" and key in out:
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith(_REFS) else None


def _searchable(path: str, prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of a searchable field, or ``None`` when ``prop`` is not one."""
    members = prop.get("oneOf")
    if not (isinstance(members, list) and len(members) == 3):
        return None
    names = [_ref_name(m) for m in members]
    if not (names[0] is None and names[1] and names[1].startswith("Choices_") and names[2]):
        return None
    choices_def, range_def = defs[names[1]], defs[names[2]]
    value = _merge(members[0], {**_interval(path), **_VALUE_RULES.get(path, {})})
    # The forms carry no description of their own: an editor's hover then shows the field's.
    choices = {
        "type": "object",
        "properties": {"choices": {**_describe(choices_def, "choices"), "type": "array", "items": value,
                                   "minItems": 1, "uniqueItems": True}},
        "required": ["choices"],
        "additionalProperties": False,
    }
    forms = [value, choices]
    numeric = names[2].startswith("Range_")
    if numeric:
        number = members[0]  # {"type": "number"} or {"type": "integer"}
        ends = _merge(number, _interval(path))
        rng: dict[str, Any] = {
            "type": "object",
            "properties": {
                "low": {**_describe(range_def, "low"), **ends},
                "high": {**_describe(range_def, "high"), **ends},
                "step": {**_describe(range_def, "step"), "anyOf": [{**number, "exclusiveMinimum": 0},
                                                                  {"type": "null"}], "default": None},
                "log": {**_describe(range_def, "log"), "type": "boolean", "default": False},
            },
            "required": ["low", "high"],
            "additionalProperties": False,
            # a log range needs low > 0 and no step
            "if": {"properties": {"log": {"const": True}}, "required": ["log"]},
            "then": {"properties": {"low": {"exclusiveMinimum": 0}, "step": {"type": "null"}}},
        }
        forms.append(_merge(rng, _RANGE_RULES.get(path, {})))
    out = {k: v for k, v in prop.items() if k != "oneOf"}
    text = out.get("description", "")
    out["description"] = f"{text} {_SEARCHABLE if numeric else _CATEGORICAL}".strip()
    out["oneOf"] = forms
    return out


def _describe(model_def: dict[str, Any], field: str) -> dict[str, Any]:
    text = model_def["properties"][field].get("description")
    return {"description": text} if text else {}


def _mend_model(name: str, path: str, defs: dict[str, Any], done: set[str]) -> None:
    """Mend the model ``defs[name]`` found at dotted ``path`` and, depth first, the models it refers to."""
    done.add(name)
    model = defs[name]
    for field, prop in model["properties"].items():
        dotted = f"{path}{field}"
        sub = _ref_name(prop)
        if sub is not None and sub not in done:
            _mend_model(sub, f"{dotted}.", defs, done)
            continue
        mended = _searchable(dotted, prop, defs)
        if mended is not None:
            model["properties"][field] = mended
        elif dotted in _FIELD_RULES:
            model["properties"][field] = _merge(prop, _FIELD_RULES[dotted])


def _used_defs(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        name = _ref_name(node)
        if name is not None:
            out.add(name)
        for value in node.values():
            _used_defs(value, out)
    elif isinstance(node, list):
        for value in node:
            _used_defs(value, out)
    return out


def space_json_schema() -> dict[str, Any]:
    """The JSON Schema of a space file (a fresh dict)."""
    raw = Space.model_json_schema(ref_template=_REFS + "{model}")
    defs = raw.pop("$defs")
    defs["Space"] = raw
    _mend_model("Space", "", defs, set())
    root = defs.pop("Space")
    used: set[str] = set()
    _used_defs(root, used)
    while True:  # defs referred to by defs
        more = set().union(*(_used_defs(defs[n], set()) for n in used)) - used
        if not more:
            break
        used |= more
    root.pop("title", None)
    root.pop("description", None)
    head = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "autokd search space",
        "description": "A search space file of autokd (version 1), generated from autokd's pydantic models by "
                       "`autokd schema`. `autokd validate` also checks the rules between fields.",
    }
    return {**head, **root, "definitions": {n: defs[n] for n in sorted(used)}}


def space_json_schema_text() -> str:
    """:func:`space_json_schema` as the text of the schema file (2-space indents, ending in a newline)."""
    return json.dumps(space_json_schema(), indent=2, ensure_ascii=False) + "\n"
