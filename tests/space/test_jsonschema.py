"""The JSON Schema of a space file (``autokd.space.jsonschema``): a valid draft-07 schema (the dialect
yaml-language-server supports fully) that accepts every example space, says what each field is, accepts exactly the searchable forms, and agrees with autokd's own
validation on hand-made documents (with the few differences it is known to have, listed here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra: pip install -e '.[test]'")

from autokd.errors import SpaceError  # noqa: E402
from autokd.space import Space, space_from_dict  # noqa: E402
from autokd.space.jsonschema import SCHEMA_DIALECT, space_json_schema  # noqa: E402
from autokd.space.yamlio import _read_yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "spaces").glob("*.yaml"))
BASE = {"version": 1, "name": "doc"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return space_json_schema()


@pytest.fixture(scope="module")
def validator(schema):
    cls = jsonschema.validators.validator_for(schema)  # the dialect its $schema names
    assert cls is jsonschema.Draft7Validator
    return cls(schema)


def doc(**sections: Any) -> dict[str, Any]:
    """A space document: BASE plus ``section={field: value}`` (a non-dict section value is used as is)."""
    return {**copy.deepcopy(BASE), **copy.deepcopy(sections)}


def autokd_accepts(data: dict[str, Any]) -> bool:
    try:
        space_from_dict(copy.deepcopy(data))
    except SpaceError:
        return False
    return True


def _walk(node: Any, path: str = "#"):
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


# ------------------------------------------------------------------------------------------------
# The schema itself


def test_schema_is_a_valid_draft_07_schema_with_an_id_and_title(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(schema)  # and means the same to a tool that reads it as 2020-12
    assert schema["$schema"] == SCHEMA_DIALECT == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"] and schema["title"] and schema["description"]
    assert schema["properties"]["version"]["const"] == 1
    assert schema["required"] == ["version", "name"]


def test_no_subschema_accepts_anything_and_every_object_is_closed(schema):
    for path, node in _walk(schema):
        if path.endswith("/properties") or path.endswith("/definitions") or path.endswith("/default"):
            continue  # maps of names, or a default value: not schemas
        if "/default/" in path:
            continue
        assert node != {}, f"{path} is an accept-anything schema"
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
    assert "NotARange" not in schema["definitions"] and "$defs" not in schema
    refs = {node["$ref"] for _, node in _walk(schema) if isinstance(node.get("$ref"), str)}
    assert refs == {f"#/definitions/{name}" for name in schema["definitions"]}, "dangling or unused definitions"
    for path, node in _walk(schema):  # draft-07 ignores the siblings of a $ref: only annotations may stand there
        if "$ref" in node:
            assert set(node) <= {"$ref", "default", "description", "title"}, path


def test_every_field_has_a_description(schema):
    def described(prop: dict[str, Any]) -> bool:
        if prop.get("description"):
            return True
        ref = prop.get("$ref", "")
        return bool(ref) and bool(schema["definitions"][ref.rsplit("/", 1)[-1]].get("description"))

    models = {"Space": schema, **schema["definitions"]}
    missing = [f"{model}.{field}" for model, node in models.items()
               for field, prop in node.get("properties", {}).items() if not described(prop)]
    assert not missing, f"fields without a description: {missing}"


def test_defaults_and_allowed_values_are_shown(schema):
    train = schema["definitions"]["TrainSpec"]["properties"]
    assert train["epochs"]["default"] == 10 and train["epochs"]["minimum"] == 1
    assert train["schedule"]["enum"] == ["cosine", "onecycle"]
    optimizer = train["optimizer"]
    assert optimizer["default"] == "sgd"
    assert optimizer["oneOf"][0]["enum"] == ["sgd", "adamw"]
    assert optimizer["oneOf"][1]["properties"]["choices"]["items"]["enum"] == ["sgd", "adamw"]
    assert schema["definitions"]["DatasetSpec"]["properties"]["name"]["enum"][0] == "digits"


def _searchable_fields() -> dict[str, bool]:
    """dotted path -> numeric, for every searchable field of the pydantic models."""
    out: dict[str, bool] = {}

    def visit(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():
            text = repr(field.annotation)
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                visit(field.annotation, f"{prefix}{name}.")
            elif "Choices[" in text:
                out[f"{prefix}{name}"] = "Range[" in text
    visit(Space, "")
    return out


def _field_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        prop = node["properties"][part]
        node = schema["definitions"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else prop
    return node


def test_searchable_fields_take_exactly_their_forms(schema):
    fields = _searchable_fields()
    assert {"model.width_mult", "distill.kd", "model.conv", "train.optimizer", "compress.bits"} <= set(fields)
    for path, numeric in fields.items():
        forms = _field_schema(schema, path)["oneOf"]
        assert len(forms) == (3 if numeric else 2), path
        assert forms[1]["required"] == ["choices"]
        if numeric:
            assert forms[2]["required"][:2] == ["low", "high"]
            assert set(forms[2]["properties"]) == {"low", "high", "step", "log"}


@pytest.mark.parametrize("path", sorted(p for p, numeric in _searchable_fields().items() if not numeric))
def test_a_range_on_a_categorical_field_is_rejected_by_both(validator, path):
    section, *rest = path.split(".")
    data = doc()
    node = data.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = {"low": 0, "high": 1}
    assert not validator.is_valid(data)
    with pytest.raises(SpaceError, match="not a range"):
        space_from_dict(data)


# ------------------------------------------------------------------------------------------------
# The example spaces


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_example_space_validates(validator, path):
    data, _ = _read_yaml(path)  # autokd's own YAML rules (1.2 numbers and booleans)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors


def test_there_are_example_spaces():
    assert len(SPACES) >= 4


# ------------------------------------------------------------------------------------------------
# Agreement with autokd's validation (the pydantic models and the single-field checks)

VALID = {
    "minimal": doc(),
    "fixed values": doc(model={"width_mult": 0.5, "kernel_size": 5, "conv": "standard"}, train={"optimizer": "adamw"}),
    "float range": doc(model={"width_mult": {"low": 0.25, "high": 1.0}}),
    "float range with step": doc(model={"width_mult": {"low": 0.25, "high": 1.0, "step": 0.25}}),
    "int as float range end": doc(model={"depth_mult": {"low": 1, "high": 2}}),
    "log range": doc(train={"lr": {"low": 0.001, "high": 0.1, "log": True}}),
    "odd kernel range": doc(model={"kernel_size": {"low": 3, "high": 7, "step": 2}}),
    "kernel choices": doc(model={"kernel_size": {"choices": [3, 5, 7]}}),
    "bits choices": doc(compress={"bits": {"choices": [32, 8, 4, 2]}}),
    "bits range": doc(compress={"bits": {"low": 2, "high": 8}}),
    "categorical choices": doc(train={"optimizer": {"choices": ["sgd", "adamw"]}},
                               model={"conv": {"choices": ["depthwise", "standard"]}}),
    "kd searched": doc(distill={"kd": {"choices": [True, False]}}),
    "teacher": doc(distill={"teacher": {"width": 8, "augment": False, "checkpoint": None}}),
    "two objectives": doc(search={"objectives": ["bitops", "size"]}),
    "nulls": doc(dataset={"root": None, "image_size": None}, compress={"finetune_lr": None}),
    "bounds at their edges": doc(distill={"alpha": 1.0, "temperature": 0.1}, model={"dropout": 0.0}),
    "bf16": doc(train={"precision": "bf16"}),
}

INVALID = {
    "no version": {"name": "doc"},
    "version 2": {**BASE, "version": 2},
    "no name": {"version": 1},
    "bad name": doc(name="two words"),
    "unknown top-level key": doc(trian={"epochs": 1}),
    "unknown nested key": doc(train={"epoch": 1}),
    "unknown key two levels down": doc(distill={"teacher": {"widht": 8}}),
    "unknown key in choices": doc(model={"width_mult": {"choices": [0.5], "low": 0.25}}),
    "unknown key in a range": doc(model={"width_mult": {"low": 0.25, "high": 1.0, "steps": 0.25}}),
    "range without high": doc(model={"width_mult": {"low": 0.25}}),
    "range on a bool": doc(distill={"kd": {"low": 0, "high": 1}}),
    "range on a literal": doc(model={"conv": {"low": 0, "high": 1}}),
    "wrong dataset": doc(dataset={"name": "imagenet"}),
    "wrong optimizer": doc(train={"optimizer": "adam"}),
    "wrong choice": doc(model={"conv": {"choices": ["depthwise", "dilated"]}}),
    "wrong objective": doc(search={"objectives": ["latency"]}),
    "wrong schedule": doc(train={"schedule": "step"}),
    "wrong type": doc(model={"width_mult": "wide"}),
    "float for an int": doc(train={"epochs": 2.5}),
    "section not a mapping": doc(search=["tpe"]),
    "empty choices": doc(model={"width_mult": {"choices": []}}),
    "repeated choices": doc(model={"width_mult": {"choices": [0.5, 0.5]}}),
    "alpha above 1": doc(distill={"alpha": 1.5}),
    "alpha choice above 1": doc(distill={"alpha": {"choices": [0.5, 1.5]}}),
    "alpha range above 1": doc(distill={"alpha": {"low": 0.5, "high": 1.5}}),
    "width 0": doc(model={"width_mult": 0}),
    "unsupported bits": doc(compress={"bits": 16}),
    "unsupported bits choice": doc(compress={"bits": {"choices": [8, 16]}}),
    "bits range past 8": doc(compress={"bits": {"low": 2, "high": 16}}),
    "even kernel": doc(model={"kernel_size": 4}),
    "kernel range with even values": doc(model={"kernel_size": {"low": 3, "high": 7}}),
    "kernel range step 1": doc(model={"kernel_size": {"low": 3, "high": 7, "step": 1}}),
    "log range from 0": doc(train={"lr": {"low": 0, "high": 1, "log": True}}),
    "log range with step": doc(train={"lr": {"low": 0.01, "high": 1, "log": True, "step": 0.01}}),
    "step 0": doc(model={"width_mult": {"low": 0.25, "high": 1.0, "step": 0}}),
    "negative step": doc(model={"expand_ratio": {"low": 2, "high": 6, "step": -2}}),
    "epochs 0": doc(train={"epochs": 0}),
    "batch of 1": doc(train={"batch_size": 1}),
    "val_fraction 1": doc(dataset={"val_fraction": 1.0}),
    "no objectives": doc(search={"objectives": []}),
    "three objectives": doc(search={"objectives": ["flops", "size", "params"]}),
    "repeated objectives": doc(search={"objectives": ["flops", "flops"]}),
    "wrong teacher augment": doc(distill={"teacher": {"augment": "always"}}),
}

# Where the schema is stricter: autokd coerces these (pydantic's lax mode), an editor flags them.
SCHEMA_STRICTER = {
    "int as a string": doc(train={"epochs": "3"}),
    "bool as a string": doc(distill={"kd": "true"}),
    "bool as an int": doc(train={"augment": 1}),
}

# What a schema cannot say: rules between values and fields, the registry, the machine. `autokd validate` says it.
SCHEMA_LOOSER = {
    "low above high": doc(model={"width_mult": {"low": 1.0, "high": 0.5}}),
    "imagefolder without root": doc(dataset={"name": "imagefolder"}),
    "twins without searched kd": doc(search={"kd_twins": True}),
    "unknown family": doc(model={"family": "vgg"}),
    "searched compression without fine-tuning": doc(compress={"bits": {"choices": [32, 8]}, "finetune_epochs": 0}),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_both_accept(validator, name):
    data = VALID[name]
    assert autokd_accepts(data), f"autokd rejects the valid document {name!r}"
    assert not [e.message for e in validator.iter_errors(data)]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_both_reject(validator, name):
    data = INVALID[name]
    assert not autokd_accepts(data), f"autokd accepts the invalid document {name!r}"
    assert not validator.is_valid(data), f"the schema accepts the invalid document {name!r}"


def test_read_as_draft_2020_12_it_means_the_same(schema, validator):
    newer = jsonschema.Draft202012Validator(schema)
    for data in [*VALID.values(), *INVALID.values(), *SCHEMA_STRICTER.values(), *SCHEMA_LOOSER.values()]:
        assert newer.is_valid(data) == validator.is_valid(data), data


@pytest.mark.parametrize("name", sorted(SCHEMA_STRICTER))
def test_schema_is_stricter_on_types(validator, name):
    assert autokd_accepts(SCHEMA_STRICTER[name]) and not validator.is_valid(SCHEMA_STRICTER[name])


@pytest.mark.parametrize("name", sorted(SCHEMA_LOOSER))
def test_cross_field_rules_are_left_to_autokd(validator, name):
    assert validator.is_valid(SCHEMA_LOOSER[name]) and not autokd_accepts(SCHEMA_LOOSER[name])


def test_unknown_keys_are_reported_where_they_are(validator):
    data = doc(trian={}, train={"epoch": 1}, distill={"teacher": {"widht": 8}})
    where = {"/".join(map(str, e.absolute_path)) or "(top)": e.message for e in validator.iter_errors(data)}
    assert set(where) == {"(top)", "train", "distill/teacher"}
    assert "'trian' was unexpected" in where["(top)"]
    assert "'epoch' was unexpected" in where["train"]
    assert "'widht' was unexpected" in where["distill/teacher"]
