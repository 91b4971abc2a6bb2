"""Space + Optuna trial -> a fully resolved, frozen configuration.

Works with any object that has Optuna's ``suggest_*`` methods: a live ``optuna.Trial`` during a search, or an
``optuna.trial.FixedTrial`` to replay a finished trial's parameters exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autokd.space import Dimension, Space, dimensions, resolve


@dataclass(frozen=True)
class TrialConfig:
    """The settings one trial runs with: every field fixed. ``params`` holds the searched values by dotted name."""

    space: Space
    params: dict[str, Any]

    def __getattr__(self, name: str) -> Any:  # cfg.model, cfg.train, ... read through to the resolved space
        if name in ("space", "params"):
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
    """Draw every searched field from ``trial`` and resolve the space."""
    params = {dim.path: suggest(trial, dim) for dim in dimensions(space)}
    return TrialConfig(resolve(space, params), params)
