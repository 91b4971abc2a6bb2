"""The space schema: YAML loading, --set overrides, dimensions, hashing, resolving."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from autokd.errors import SpaceError
from autokd.space import (
    Choices,
    Range,
    dimensions,
    discrete_size,
    is_resolved,
    legacy_space_hashes,
    load_space,
    parse_overrides,
    parse_yaml_value,
    resolve,
    space_from_dict,
    space_hash,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]

KNOWN = """\
version: 1
name: known
dataset:
  name: digits
  image_size: 8
model:
  family: mobilenetv2
  width_mult: {choices: [0.25, 0.5, 1.0]}
  kernel_size: {low: 3, high: 7, step: 2}
  conv: {choices: [depthwise, standard]}
  dropout: {low: 0.0, high: 0.3, step: 0.1}
distill:
  kd: {choices: [true, false]}
train:
  epochs: 1
  lr: {low: 0.01, high: 0.1, log: true}
"""


def errors(exc_info) -> list[str]:
    return exc_info.value.lines


# --- YAML ----------------------------------------------------------------------------------------


def test_yaml_12_exponent_without_dot_is_a_float(space_file, tiny_space):
    text = "version: 1\nname: t\ntrain:\n  lr: 1e-3\n  weight_decay: 5.0e-4\n  label_smoothing: 1E-1\n"
    sp = load_space(space_file(text))
    assert isinstance(sp.train.lr, float) and sp.train.lr == 0.001
    assert sp.train.weight_decay == pytest.approx(5e-4)
    assert sp.train.label_smoothing == pytest.approx(0.1)


def test_yaml_12_floats_in_ranges_and_overrides(space_file):
    sp = load_space(space_file("version: 1\nname: t\ntrain:\n  lr: {low: 1e-3, high: 1e-1, log: true}\n"))
    (dim,) = dimensions(sp)
    assert (dim.low, dim.high, dim.log) == (0.001, 0.1, True)
    assert parse_yaml_value("1e-3") == 0.001
    assert parse_yaml_value("-2E+2") == -200.0
    assert parse_yaml_value("3") == 3 and isinstance(parse_yaml_value("3"), int)
    assert parse_yaml_value("1e3") == 1000.0 and isinstance(parse_yaml_value("1e3"), float)


def test_load_space_records_its_source(space_file, tiny_space):
    path = space_file(tiny_space)
    assert load_space(path).source == str(path)
    assert space_from_dict(tiny_space).source is None


def test_repo_example_space_is_valid():
    sp = load_space(REPO / "spaces" / "mobilenet.yaml")
    paths = [d.path for d in dimensions(sp)]
    assert "model.width_mult" in paths and "distill.kd" in paths


def test_space_file_and_dict_agree(space_file, tiny_space):
    assert space_hash(load_space(space_file(tiny_space))) == space_hash(space_from_dict(tiny_space))


def test_to_dict_round_trips(tiny_space):
    sp = space_from_dict(tiny_space)
    again = space_from_dict(to_dict(sp))
    assert to_dict(again) == to_dict(sp)
    assert space_hash(again) == space_hash(sp)


# --- overrides -----------------------------------------------------------------------------------


def test_set_values_are_parsed_as_yaml(space_file, tiny_space):
    sp = load_space(space_file(tiny_space), overrides=["train.epochs=3", "train.lr=1e-3", "distill.kd=true",
                                                       "model.width_mult={choices: [0.25]}", "dataset.limit=100"])
    assert sp.train.epochs == 3 and isinstance(sp.train.epochs, int)
    assert sp.train.lr == 0.001
    assert sp.distill.kd is True
    assert isinstance(sp.model.width_mult, Choices) and sp.model.width_mult.choices == [0.25]
    assert sp.dataset.limit == 100


def test_later_set_wins(tiny_space):
    sp = space_from_dict(tiny_space, overrides=["train.epochs=3", "train.epochs=5"])
    assert sp.train.epochs == 5


def test_set_creates_missing_blocks(tiny_space):
    del tiny_space["train"]
    sp = space_from_dict(tiny_space, overrides=["train.epochs=2"])
    assert sp.train.epochs == 2


def test_set_list_for_a_searchable_field_fails_located(space_file, tiny_space):
    with pytest.raises(SpaceError) as exc:
        load_space(space_file(tiny_space), overrides=["model.width_mult=[0.5]"])
    (line,) = errors(exc)
    assert line.startswith("--set model.width_mult=[0.5]: model.width_mult: ")


def test_set_range_for_a_searchable_field(tiny_space):
    sp = space_from_dict(tiny_space, overrides=["train.lr={low: 0.01, high: 0.1, log: true}"])
    assert isinstance(sp.train.lr, Range)
    assert [d.path for d in dimensions(sp)][-1] == "train.lr"


def test_set_problems_point_at_the_override_not_the_file(space_file, tiny_space):
    path = space_file(tiny_space)
    with pytest.raises(SpaceError) as exc:
        load_space(path, overrides=["train.epochs=0"])
    (line,) = errors(exc)
    assert line.startswith("--set train.epochs=0: train.epochs: ")
    assert str(path) not in line


@pytest.mark.parametrize("text", ["train.epochs", "=1", "train..epochs=1", "1train=2", "train epochs=1"])
def test_parse_overrides_rejects_malformed(text):
    with pytest.raises(SpaceError) as exc:
        parse_overrides([text])
    assert errors(exc)[0].startswith("--set: expected dotted.path=VALUE")


def test_parse_overrides_keeps_text_after_first_equals():
    ((path, value, text),) = parse_overrides(["name=a=b"])
    assert (path, value, text) == ("name", "a=b", "name=a=b")


# --- dimensions ----------------------------------------------------------------------------------


def test_dimensions_of_a_known_space(space_file):
    sp = load_space(space_file(KNOWN))
    dims = {d.path: d for d in dimensions(sp)}
    assert set(dims) == {"model.width_mult", "model.kernel_size", "model.conv", "model.dropout", "distill.kd",
                         "train.lr"}
    assert dims["model.width_mult"].choices == (0.25, 0.5, 1.0) and dims["model.width_mult"].size == 3
    k = dims["model.kernel_size"]
    assert (k.low, k.high, k.step, k.is_int, k.size) == (3, 7, 2, True, 3)
    d = dims["model.dropout"]
    assert (d.is_int, d.size) == (False, 4)  # 0.0, 0.1, 0.2, 0.3
    assert dims["model.conv"].size == 2 and dims["distill.kd"].choices == (True, False)
    lr = dims["train.lr"]
    assert (lr.log, lr.size, lr.is_int) == (True, None, False)
    assert discrete_size(list(dims.values())) == (3 * 3 * 2 * 4 * 2, 1)


def test_discrete_size_without_dimensions(tiny_space):
    tiny_space["model"]["width_mult"] = 0.25
    tiny_space["distill"]["kd"] = False
    sp = space_from_dict(tiny_space)
    assert dimensions(sp) == [] and discrete_size([]) == (1, 0)
    assert is_resolved(sp)


def test_describe():
    sp = space_from_dict({"version": 1, "name": "d", "model": {"kernel_size": {"low": 3, "high": 7, "step": 2}},
                          "distill": {"kd": {"choices": [True, False]}},
                          "train": {"lr": {"low": 0.01, "high": 0.1, "log": True}}})
    described = {d.path: d.describe() for d in dimensions(sp)}
    assert described == {"model.kernel_size": "int [3, 7], step 2", "distill.kd": "{true, false}",
                         "train.lr": "float [0.01, 0.1], log"}


# --- hashing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["search.n_trials=50", "search.max_failures=9", "search.early_stop=true",
                                      "search.sampler=tpe", "search.sampler=random"])
def test_space_hash_ignores_budget_fields(tiny_space, override):
    assert space_hash(space_from_dict(tiny_space, overrides=[override])) == space_hash(space_from_dict(tiny_space))


@pytest.mark.parametrize("override", ["train.epochs=2", "train.lr=0.1", "model.width_mult={choices: [0.25, 1.0]}",
                                      "distill.teacher.width=16", "dataset.image_size=16", "search.seed=1",
                                      "search.startup_trials=3", "name=other"])
def test_space_hash_changes_with_the_question(tiny_space, override):
    assert space_hash(space_from_dict(tiny_space, overrides=[override])) != space_hash(space_from_dict(tiny_space))


def test_space_hash_is_stable_and_short(tiny_space):
    a, b = space_hash(space_from_dict(tiny_space)), space_hash(space_from_dict(copy.deepcopy(tiny_space)))
    assert a == b and len(a) == 16 and int(a, 16) >= 0


def test_space_hash_of_a_shipped_space_is_pinned():
    # GOLDEN VALUE. The hash is a study's identity: `autokd search` resumes an existing study only when the space
    # file hashes to the value stored with it (else only with --allow-space-change), and the studies made so far
    # were created with this one. A change of this value (a new defaulted field hashed, a reordering, another
    # serialization) breaks resuming every existing study, so it must never change without a migration of the
    # stored hashes. (An edit to the question in spaces/mobilenet.yaml changes it too, rightly: another study.)
    # The sampler left the hash (it is a budget field now); the studies made while it was hashed stored the value
    # below, which legacy_space_hashes keeps accepted (tests/study/test_study.py resumes such a study).
    # The design phase (search.design) came later, and is left out of the hash while absent: the shipped space
    # without it keeps the value its studies stored. With its design (a new question) it hashes to the second one.
    space = load_space(REPO / "spaces" / "mobilenet.yaml", machine=False, overrides=["search.design=null"])
    assert space_hash(space) == "a134eed756cde50d"
    assert "530b394c7dec6492" in legacy_space_hashes(space)
    shipped = load_space(REPO / "spaces" / "mobilenet.yaml", machine=False)
    assert space_hash(shipped) == "c59dd55f6f526198"


def test_legacy_hashes_are_the_old_hash_under_each_sampler(tiny_space):
    # what space_hash returned while search.sampler was hashed: the question plus the sampler, nothing else
    import hashlib
    import json

    from autokd.space.identity import BUDGET_FIELDS, LATER_FIELDS

    def old_hash(space):
        budget = {"search": BUDGET_FIELDS["search"] - {"sampler"}}
        data = space.model_dump(mode="json", exclude=budget)
        for section, fields in LATER_FIELDS.items():
            for name, default in fields.items():
                if data[section].get(name, default) == default:
                    data[section].pop(name, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    olds = {old_hash(space_from_dict(tiny_space, overrides=[f"search.sampler={s}"]))
            for s in ("tpe", "nsga2", "random", "gp")}
    assert len(olds) == 4
    assert legacy_space_hashes(space_from_dict(tiny_space)) == olds
    assert space_hash(space_from_dict(tiny_space)) not in olds
    other = space_from_dict(tiny_space, overrides=["train.epochs=2"])  # another question: none of them
    assert not legacy_space_hashes(other) & olds


# --- resolve -------------------------------------------------------------------------------------


def test_resolve_fixes_every_searched_field(tiny_space):
    sp = space_from_dict(tiny_space)
    r = resolve(sp, {"model.width_mult": 0.5, "distill.kd": False})
    assert r.model.width_mult == 0.5 and r.distill.kd is False
    assert is_resolved(r) and not is_resolved(sp)
    assert r.train.epochs == sp.train.epochs


def test_resolve_reports_missing_and_unknown_params(tiny_space):
    sp = space_from_dict(tiny_space)
    with pytest.raises(SpaceError) as exc:
        resolve(sp, {"model.width_multt": 0.5})
    lines = errors(exc)
    assert any(line.startswith("model.width_mult: no value given") for line in lines)
    assert any(line.startswith("distill.kd: no value given") for line in lines)
    assert any(line.startswith("model.width_multt: not a searched field") and "did you mean 'model.width_mult'"
               in line for line in lines)


# --- checks that raise through the library too -----------------------------------------------------


@pytest.mark.parametrize("override,fragment", [
    ("train.lr={low: 0.1, high: 0.1}", "low must be < high"),
    ("model.dropout={low: 0.0, high: 0.2, step: 0.5}", "step is larger than high - low"),
    ("model.dropout={low: 0.0, high: 0.2, step: 0.1, log: true}", "a log range needs low > 0"),
    ("model.kernel_size=4", "must be odd"),
    ("model.width_mult=0", "out of range"),
    ("dataset.val_fraction=0.5", "leave at least 10%"),
    ("search.objectives=[flops, flops]", "distinct"),
    ("distill.teacher.family=mobilenetv2", "unknown teacher family"),
])
def test_cross_field_checks(tiny_space, override, fragment):
    if override.startswith("dataset.val_fraction"):
        tiny_space["dataset"]["test_fraction"] = 0.4
    with pytest.raises(SpaceError) as exc:
        space_from_dict(tiny_space, overrides=[override])
    assert any(fragment in line for line in errors(exc)), errors(exc)


def test_space_name_pattern(tiny_space):
    tiny_space["name"] = "../etc"
    with pytest.raises(SpaceError) as exc:
        space_from_dict(tiny_space)
    assert errors(exc) == ["name: use letters, digits, '.', '_' and '-' only (got '../etc')"]


def test_a_methods_settings_apply_only_with_that_method_and_kd_on():
    """distill.<method>.* applies where distill.method is that method, which applies only with KD on: a trial
    elsewhere draws none and runs at the default; a value given where it does not apply is refused."""
    import optuna

    from autokd.errors import SpaceError
    from autokd.sampling import sample
    from autokd.space import applies, resolve

    space = space_from_dict({"version": 1, "name": "s", "distill": {
        "kd": {"choices": [True, False]}, "method": {"choices": ["hinton", "at"]},
        "at": {"beta": {"choices": [300.0, 1000.0]}, "layers": {"choices": ["all", 1]}}}})
    assert not applies(space, "distill.at.beta", {"distill.kd": False})
    assert not applies(space, "distill.at.beta", {"distill.kd": True, "distill.method": "hinton"})
    assert applies(space, "distill.at.beta", {"distill.kd": True, "distill.method": "at"})
    off = sample(space, optuna.trial.FixedTrial({"distill.kd": False}))
    assert off.params == {"distill.kd": False} and off.space.distill.at.beta == 1000.0
    on = sample(space, optuna.trial.FixedTrial({"distill.kd": True, "distill.method": "at", "distill.at.beta": 300.0,
                                                "distill.at.layers": 1}))
    assert (on.space.distill.at.beta, on.space.distill.at.layers) == (300.0, 1)
    with pytest.raises(SpaceError, match="distill.at.beta: does not apply with distill.method = hinton"):
        resolve(space, {"distill.kd": True, "distill.method": "hinton", "distill.at.beta": 300.0})
    with pytest.raises(SpaceError, match="distill.at.layers: no value given"):
        resolve(space, {"distill.kd": True, "distill.method": "at", "distill.at.beta": 300.0})


def test_fields_added_later_are_left_out_of_the_hash_at_the_schema_defaults():
    """A study made before a field existed resumes: LATER_FIELDS must hold each field's real default."""
    from autokd.space.identity import LATER_FIELDS

    dumped = space_from_dict({"version": 1, "name": "s"}).model_dump(mode="json")
    for section, fields in LATER_FIELDS.items():
        for name, default in fields.items():
            assert dumped[section][name] == default, f"{section}.{name}"


def test_a_condition_chain_broken_at_a_fixed_link_is_refused_and_counts_nothing():
    """distill.at.layers searched with method fixed at `at` but KD fixed off: it can never apply (validate says
    which link breaks); with KD searched it hangs on distill.kd through the fixed method."""
    from autokd.space import dimensions, discrete_size

    data = {"version": 1, "name": "s", "distill": {"kd": False, "method": "at",
                                                   "at": {"layers": {"choices": ["all", "last"]}}}}
    with pytest.raises(SpaceError, match=r"distill\.at\.layers: is searched, but distill\.kd is false"):
        space_from_dict(data)
    data["distill"]["kd"] = {"choices": [True, False]}
    space = space_from_dict(data)
    assert discrete_size(dimensions(space), space) == (1 + 2, 0)  # KD off, or KD on with either layers value
