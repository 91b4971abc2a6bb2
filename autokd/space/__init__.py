"""The search space: a pydantic v2 schema, a YAML loader that keeps line numbers, ``--set`` overrides,
and small named cross-field checks.

Validation runs in two stages (as Ludwig does): the schema (types, ``extra="forbid"``, ``version: 1``),
then :data:`CHECKS`, small functions that each look at one cross-field rule. Every problem from both stages is
collected and raised at once as a :class:`~autokd.errors.SpaceError` whose lines read
``SPACE.yaml:LINE: dotted.path: what is wrong (valid: ...)``.

A field that can be searched takes a fixed value, ``{choices: [...]}`` or ``{low:, high:, step:?, log:?}``.
The Optuna parameter name of a searched field is its dotted path (``model.width_mult``).

Modules by concern: :mod:`~autokd.space.schema` (pydantic models), :mod:`~autokd.space.dimensions` (searched
fields, their conditions, resolving), :mod:`~autokd.space.checks`
(cross-field rules), :mod:`~autokd.space.jsonschema` (the JSON Schema of a space file, for editors),
:mod:`~autokd.space.identity` (the space hash), :mod:`~autokd.space.design` (the design phase's factors and levels),
:mod:`~autokd.space.memory` (the memory the data needs, against this machine's),
:mod:`~autokd.space.yamlio` (YAML with line numbers, ``--set``), :mod:`~autokd.space.messages` (both stages into
located lines). Everything a caller needs is importable from ``autokd.space``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autokd.space.checks import (BOUNDS, CHECKS, MACHINE_CHECKS, QUANT_BITS, check_memory, early_stop_enabled,
                                 kd_twins_enabled)
from autokd.space.jsonschema import space_json_schema
from autokd.space.memory import MEMORY_LIMIT_ENV, MemoryEstimate, estimate_memory, memory_limit
from autokd.space.messages import validate_data
from autokd.space.identity import BUDGET_FIELDS, legacy_space_hashes, space_hash
from autokd.space.dimensions import Dimension, applies, dimensions, discrete_size, is_resolved, resolve, to_dict
from autokd.space.schema import (Choices, CompressSpec, DatasetSpec, DesignSpec, DistillSpec, ModelSpec, Range,
                                 SearchSpec, Space, TeacherSpec, TrainSpec)
from autokd.space.yamlio import _read_yaml, parse_overrides, parse_yaml_value

__all__ = ["BOUNDS", "BUDGET_FIELDS", "CHECKS", "MACHINE_CHECKS", "MEMORY_LIMIT_ENV", "QUANT_BITS", "Choices",
           "CompressSpec", "DatasetSpec", "DesignSpec", "Dimension", "DistillSpec", "MemoryEstimate", "ModelSpec", "Range",
           "SearchSpec", "Space", "TeacherSpec", "TrainSpec", "applies", "check_memory", "dimensions", "discrete_size",
           "early_stop_enabled", "estimate_memory", "is_resolved", "kd_twins_enabled", "legacy_space_hashes",
           "load_space", "memory_limit", "parse_overrides", "parse_yaml_value", "resolve", "space_from_dict",
           "space_hash", "space_json_schema", "to_dict", "validate_data"]


def load_space(path: str | Path, *, overrides: Sequence[str] = (), machine: bool = True) -> Space:
    """Read, override and validate a YAML space file.

    ``machine``: also run the checks of whether this machine can run it (:data:`MACHINE_CHECKS`: the data fits in
    memory, optional backends such as NNI import); ``False`` for commands that only read a study made elsewhere
    (``report``, ``export``)."""
    path = Path(path)
    data, lines = _read_yaml(path)
    return validate_data(data, source=str(path), lines=lines, overrides=overrides, machine=machine)


def space_from_dict(data: dict[str, Any], *, overrides: Sequence[str] = ()) -> Space:
    """Validate a space given as plain data (as stored in a study)."""
    return validate_data(data, overrides=overrides)
