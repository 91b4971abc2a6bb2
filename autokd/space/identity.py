"""A space's identity: the canonical hash of the question it asks (budget fields left out), so that a study is
resumed only by the space it was made with, and extended by a larger budget."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autokd.space.schema import Space

# Fields that set the budget, not the question: left out of the space hash so that a study can be
# resumed or extended with more trials (early stopping and the sampler too: they decide how a budget is spent,
# not what a trial measures, and can be changed on resume).
BUDGET_FIELDS = {"search": {"n_trials", "max_failures", "early_stop", "sampler"}}
# Fields of search.design that size the design, not which points it has: a design study can be extended.
DESIGN_BUDGET_FIELDS = ("replicates", "margin", "half_width")
# Fields that were hashed before they became budget fields, with their valid values: a study made then stored a
# hash with the field in it (see :func:`legacy_space_hashes`).
HASHED_BEFORE = {"search": {"sampler": ("tpe", "nsga2", "random", "gp")}}
# Fields added after studies already existed: left out of the hash while at their default, so that a study made
# before they existed still resumes (its question did not change).
LATER_FIELDS = {"train": {"precision": "fp32"}, "compress": {"quantizer": "minmax"}, "search": {"design": None},
                "distill": {"method": "hinton", "feature_member": 0,
                            # the KD methods' settings blocks, at their defaults (as they dump)
                            "dist": {"beta": 1.0, "gamma": 1.0, "tau": 1.0}, "logit_std": {"temperature": 2.0},
                            "at": {"beta": 1000.0, "layers": "all"}, "fitnets": {"weight": 100.0, "layers": "middle"},
                            "pkt": {"weight": 30000.0}}}


def space_hash(space: Space) -> str:
    """A canonical hash of the question a space asks (budget fields left out)."""
    return _hash(_question(space))


def legacy_space_hashes(space: Space) -> set[str]:
    """The hashes that a study of this same question may have stored before a field of :data:`HASHED_BEFORE` left
    the hash. ``search.sampler`` was hashed until it became a budget field, so such a study holds the hash of
    whichever sampler it was made with; with these it still resumes, under any sampler."""
    hashes = set()
    for section, fields in HASHED_BEFORE.items():
        for name, values in fields.items():
            for value in values:
                data = _question(space)
                data[section][name] = value
                hashes.add(_hash(data))
    return hashes


def _question(space: Space) -> dict[str, Any]:
    data = space.model_dump(mode="json", exclude=BUDGET_FIELDS)
    for section, fields in LATER_FIELDS.items():
        for name, default in fields.items():
            if data[section].get(name, default) == default:
                data[section].pop(name, None)
    for name in DESIGN_BUDGET_FIELDS:
        (data["search"].get("design") or {}).pop(name, None)
    return data


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
