"""Space + Optuna trial -> a fully resolved, frozen configuration.

Works with any object that has Optuna's ``suggest_*`` methods: a live ``optuna.Trial`` during a search, or an
``optuna.trial.FixedTrial`` to replay a finished trial's parameters exactly.

A trial's **replicate** (user attribute ``replicate``, set on the design phase's points and their twins; 0 for every
other trial) is part of what it runs: replicate r > 0 of the same params trains with its own random streams
(:func:`autokd.train.stream_seed`), so it is another run, not a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from autokd.space import Dimension, Space, applies, dimensions, resolve


REPLICATE_ATTR = "replicate"  # trial user attribute: the replicate index of a design point (absent: 0)
DESIGN_POINT_ATTR = "design_point"  # trial user attribute: the index of the design point the trial runs


def replicate_of(user_attrs: Mapping[str, Any] | None) -> int:
    """The replicate index a trial's user attributes record (0 when none: every trial outside a design)."""
    value = (user_attrs or {}).get(REPLICATE_ATTR, 0)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class TrialConfig:
    """The settings one trial runs with: every field fixed. ``params`` holds the searched values by dotted name;
    ``replicate`` the design replicate whose random streams it trains with (0 outside a design)."""

    space: Space
    params: dict[str, Any]
    replicate: int = 0

    def __getattr__(self, name: str) -> Any:  # cfg.model, cfg.train, ... read through to the resolved space
        if name in ("space", "params", "replicate"):
            raise AttributeError(name)
        return getattr(self.space, name)

    def settings(self) -> dict[str, Any]:
        """Plain JSON-able data of every setting, searched and fixed."""
        return self.space.model_dump(mode="json")


def suggest(trial: Any, dim: Dimension) -> Any:
    """Ask ``trial`` for one dimension's value (parameter name = the dotted path)."""
    if dim.choices is not None:
        return trial.suggest_categorical(dim.path, list(dim.choices))
    if dim.is_int:
        return trial.suggest_int(dim.path, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(dim.path, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def sample(space: Space, trial: Any) -> TrialConfig:
    """Draw every searched field that applies from ``trial`` (a KD-off trial draws no KD method: see
    :data:`autokd.space.dimensions.CONDITIONS`) and resolve the space (with the trial's replicate, if any)."""
    params: dict[str, Any] = {}
    for dim in dimensions(space):  # schema order: a field comes after the one it depends on
        if applies(space, dim.path, params):
            params[dim.path] = suggest(trial, dim)
    return TrialConfig(resolve(space, params), params, replicate_of(getattr(trial, "user_attrs", None)))
