"""``search.design`` in a space: its techniques and levels, and one located line (exit 2) for every design that
cannot run as written."""

from __future__ import annotations

import pytest

from autokd.space import space_from_dict, space_hash
from autokd.space.design import design_factors, held_settings

BASE = """\
version: 1
name: tiny
dataset:
  name: digits
  image_size: 8
model:
  family: mobilenetv2
  width_mult: {choices: [0.25, 0.5]}
distill:
  kd: {choices: [true, false]}
  temperature: {low: 2.0, high: 6.0}
  teacher:
    width: 8
    epochs: 1
train:
  epochs: 1
  lr: {low: 0.01, high: 0.1, log: true}
compress:
  prune_ratio: {choices: [0.0, 0.5]}
search:
  n_trials: 32
  design:
    replicates: 2
    levels:
      train.lr: [0.02, 0.08]
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    lines = text.splitlines()
    hits = [i for i, line in enumerate(lines) if line == old]
    assert len(hits) == 1, old
    lines[hits[0]:hits[0] + 1] = new.splitlines()
    return "\n".join(lines) + "\n"


def test_techniques_levels_and_held_settings(space_file):
    from autokd.space import load_space

    sp = load_space(space_file(BASE))
    factors = {f.path: f.levels for f in design_factors(sp)}
    assert factors == {"model.width_mult": (0.25, 0.5), "train.lr": (0.02, 0.08), "compress.prune_ratio": (0.0, 0.5)}
    assert held_settings(sp) == {"distill.temperature": 2.0}  # KD's own setting: one value in every point


def test_a_range_defaults_to_its_low_and_high(tiny_space):
    tiny_space["train"]["lr"] = {"low": 0.01, "high": 0.1, "log": True}
    tiny_space["search"] = {"n_trials": 16, "design": {}}  # replicates: auto (a pilot of 2 replicates of 4)
    factors = {f.path: f.levels for f in design_factors(space_from_dict(tiny_space))}
    assert factors["train.lr"] == (0.01, 0.1)


def test_the_budget_fields_of_a_design_stay_out_of_the_hash(tiny_space):
    tiny_space["search"] = {"n_trials": 16, "design": {"replicates": 4}}  # 2 points: 4 replicates fit the model
    a = space_from_dict(tiny_space)
    b = space_from_dict(tiny_space, overrides=["search.design.replicates=auto", "search.design.margin=2",
                                               "search.design.half_width=0.3", "search.n_trials=40"])
    c = space_from_dict(tiny_space, overrides=["search.design.kind=full"])
    assert space_hash(a) == space_hash(b)
    assert space_hash(a) != space_hash(c)  # which design is the question
    del tiny_space["search"]["design"]
    assert space_hash(space_from_dict(tiny_space)) != space_hash(a)


def test_a_space_without_a_design_keeps_its_hash():
    # pinned: the shipped space's hash before search.design existed (a study made then still resumes)
    from autokd.space import load_space

    sp = load_space("spaces/mobilenet.yaml", overrides=["search.design=null"])
    assert space_hash(sp) == "a134eed756cde50d"


@pytest.mark.parametrize("old,new,line,fragment", [
    ("  kd: {choices: [true, false]}", "  kd: true", 22,
     "search.design: a design runs every point with its KD twin"),
    ("      train.lr: [0.02, 0.08]", "      train.lr: [0.02, 0.5]", 25,
     "search.design.levels.train.lr: 0.5 is outside the range 0.01..0.1"),
    ("      train.lr: [0.02, 0.08]", "      train.lr: [0.02]", 25,
     "search.design.levels.train.lr: a design needs at least 2 levels per technique"),
    ("      train.lr: [0.02, 0.08]", "      model.width_mult: [0.25, 0.5]", 25,
     "model.width_mult is searched over choices, which are its design levels"),
    ("      train.lr: [0.02, 0.08]", "      train.epochs: [1, 2]", 25,
     "search.design.levels.train.epochs: not a searched numeric range of this space"),
    ("  prune_ratio: {choices: [0.0, 0.5]}", "  prune_ratio: {choices: [0.3, 0.4]}", 19,
     "pruning levels 0.3 and 0.4 fall in the same report bin"),
    ("  n_trials: 32", "  n_trials: 24", 21,
     "search.n_trials: the design has 8 points, i.e. 16 trials with their KD twins per replicate, and needs 2"),
    ("    replicates: 2", "    replicates: 1", 23,
     "search.design.replicates: 1 replicate(s) of 8 points give 8 pairs, and the verdict model of 4 coefficients "
     "needs at least 9: use replicates >= 2, or 'auto'"),
    ("    replicates: 2", "    replicates: 2\n    runs: 3", 24,
     "search.design.runs: runs=3 is too few for the main-effects model"),
])
def test_an_impossible_design_is_one_located_line(cli, space_file, old, new, line, fragment):
    path = space_file(edit(old, new))
    r = cli("validate", path)
    assert r.code == 2, r
    assert len(r.error_lines) == 1, r.error_lines
    (err,) = r.error_lines
    assert fragment in err, err
    assert f"{path.name}:{line}:" in err, err
    assert "Traceback" not in r.err


def test_a_valid_design_validates_and_a_bad_kind_names_the_options(cli, space_file):
    assert cli("validate", space_file(BASE)).code == 0
    three = edit("  width_mult: {choices: [0.25, 0.5]}", "  width_mult: {choices: [0.25, 0.5, 1.0]}")
    r = cli("validate", space_file(edit("    replicates: 2", "    replicates: 2\n    kind: fraction", three)))
    assert r.code == 2 and "search.design.kind: a 'fraction' needs every factor two-level" in r.err, r.err
    r = cli("validate", space_file(edit("    replicates: 2", "    replicates: 2\n    kind: factorial")))
    assert r.code == 2 and "'factorial' is not valid" in r.err and "full" in r.err, r.err
    r = cli("validate", space_file(edit("    replicates: 2", "    replicates: many")))
    assert r.code == 2 and "search.design.replicates" in r.err, r.err


def test_a_methods_own_settings_are_drawn_not_held_by_the_design():
    """The design holds the searched KD settings every point shares (method, alpha); a method's own settings
    belong to its KD-on trials, which draw them."""
    from autokd.space import space_from_dict
    from autokd.space.design import held_settings

    space = space_from_dict({
        "version": 1, "name": "x",
        "distill": {"kd": {"choices": [True, False]}, "method": {"choices": ["at", "hinton"]},
                    "alpha": {"choices": [0.5, 0.9]}, "at": {"beta": {"choices": [300.0, 1000.0]}}},
        "compress": {"prune_ratio": {"choices": [0.0, 0.5]}, "bits": {"choices": [32, 4]}, "finetune_epochs": 1},
        "search": {"design": {"replicates": 2}, "n_trials": 48}})
    assert held_settings(space) == {"distill.method": "at", "distill.alpha": 0.5}
