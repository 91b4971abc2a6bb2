"""The searched dimensions of a space: which fields are searched (:func:`dimensions`), which apply only at some
values of others (:data:`CONDITIONS`, :func:`applies`), how many configurations the discrete ones make
(:func:`discrete_size`), and the space resolved at a trial's values (:func:`resolve`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from autokd.errors import Problem, SpaceError, hint
from autokd.space.schema import _SETTINGS_BLOCKS, METHOD_SETTINGS, Choices, Range, Space

@dataclass(frozen=True)
class Dimension:
    """One searched field: its Optuna name (dotted path) and its distribution."""

    path: str
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    is_int: bool = False

    @property
    def size(self) -> int | None:
        """Number of distinct values, or ``None`` for a continuous dimension."""
        if self.choices is not None:
            return len(self.choices)
        if self.is_int:
            return int((self.high - self.low) // (self.step or 1)) + 1
        if self.step:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(_fmt(c) for c in self.choices) + "}"
        kind = "int" if self.is_int else "float"
        extra = (f", step {_fmt(self.step)}" if self.step else "") + (", log" if self.log else "")
        return f"{kind} [{_fmt(self.low)}, {_fmt(self.high)}]{extra}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def walk_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, (Choices, Range)):
            yield path, value
        elif isinstance(value, BaseModel):
            yield from walk_fields(value, path + ".")
        else:
            yield path, value


def dimensions(space: Space) -> list[Dimension]:
    """The searched fields of ``space``, in schema order (dataset, model, distill, train, compress, search)."""
    dims = []
    for path, value in walk_fields(space):
        if isinstance(value, Choices):
            dims.append(Dimension(path, choices=tuple(value.choices)))
        elif isinstance(value, Range):
            dims.append(Dimension(path, low=value.low, high=value.high, step=value.step, log=value.log,
                                  is_int=isinstance(value.low, int) and isinstance(value.high, int)))
    return dims


# A searched field that applies only when another field has one of some values: a KD method only with KD on, a
# method's own settings only with that method. A trial where it does not apply draws no value for it (a KD-off
# trial carries no method, so one KD-off run serves every method) and runs with the field's default. Chains: a
# method's settings apply only where the method itself applies.
CONDITIONS: dict[str, tuple[str, tuple[Any, ...]]] = {"distill.method": ("distill.kd", (True,))}
CONDITIONS.update({f"distill.{m}.{name}": ("distill.method", (m,))
                   for m in METHOD_SETTINGS for name in _SETTINGS_BLOCKS[m].model_fields})


def _matches(value: Any, allowed: Sequence[Any]) -> bool:
    return any(value == a and type(value) is type(a) for a in allowed)


def discrete_size(dims: Sequence[Dimension], space: Space | None = None) -> tuple[int, int]:
    """(number of configurations of the discrete dimensions, number of continuous dimensions). A field that
    applies only at some values of another (:data:`CONDITIONS`) multiplies only those: ``distill.kd`` {true,
    false} with 3 methods is 1 + 3 configurations, not 6. A continuous field counts once wherever it applies.
    With ``space``, a condition on a fixed field is read from it (a method's searched settings with the method
    fixed hang on ``distill.kd``; a field that never applies counts nothing)."""
    by_path = {d.path: d for d in dims}
    children: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}  # searched field -> (field hanging on it, values)
    never: set[str] = set()
    for path in by_path:
        if path not in CONDITIONS:
            continue
        other, allowed = CONDITIONS[path]
        while other not in by_path and space is not None:  # a fixed link: follow the chain up through it
            if not _matches(_value_at(space, other), allowed):
                never.add(path)
                break
            if other not in CONDITIONS:
                break
            other, allowed = CONDITIONS[other]
        if path not in never and other in by_path:
            children.setdefault(other, []).append((path, allowed))
    hanging = {c for cs in children.values() for c, _ in cs}
    continuous: set[str] = set()

    def count(path: str) -> int:  # the configurations of ``path`` and the fields that hang on it
        d = by_path[path]
        if d.choices is None:
            if d.size is None:
                continuous.add(path)
            below = 1
            for c, _ in children.get(path, ()):
                below *= count(c)
            return (d.size or 1) * below
        total = 0
        for v in d.choices:
            n = 1
            for c, allowed in children.get(path, ()):
                if _matches(v, allowed):
                    n *= count(c)
            total += n
        return total

    size = 1
    for d in dims:
        if d.path not in hanging and d.path not in never:
            size *= count(d.path)
    return size, len(continuous)


def _value_at(model: BaseModel, path: str) -> Any:
    node: Any = model
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _default_at(path: str) -> Any:
    """The schema default of the field at ``path``."""
    model: type[BaseModel] = Space
    *parents, name = path.split(".")
    for part in parents:
        default = model.model_fields[part].default
        model = type(default)
    return model.model_fields[name].default


def applies(space: Space, path: str, params: dict[str, Any]) -> bool:
    """Whether the searched field ``path`` applies to a trial with ``params`` (see :data:`CONDITIONS`); the field
    it depends on is read from ``params`` when searched, else from the space, and must apply itself."""
    if path not in CONDITIONS:
        return True
    other, values = CONDITIONS[path]
    value = params[other] if other in params else _value_at(space, other)
    return _matches(value, values) and applies(space, other, params)


def _link(space: Space, path: str, params: dict[str, Any]) -> str:
    """The first link of ``path``'s condition chain that does not hold, as ``field = value``."""
    other, values = CONDITIONS[path]
    value = params[other] if other in params else _value_at(space, other)
    if isinstance(value, (Choices, Range)):  # searched, and no value given
        return f"{other} not given"
    if _matches(value, values) and other in CONDITIONS:
        return _link(space, other, params)
    return f"{other} = {_fmt(value)}"


def resolve(space: Space, params: dict[str, Any]) -> Space:
    """A copy of ``space`` with every searched field set from ``params`` (dotted names); a searched field that does
    not apply to these params (:func:`applies`) takes its default.

    Raises :class:`SpaceError` if a searched field that applies has no value, or a value names no searched field
    or one that does not apply.
    """
    dims = {d.path for d in dimensions(space)}

    def active(p: str) -> bool:
        # a field whose controlling field is searched but has no value counts as applying (that absence is the
        # problem reported)
        if p not in CONDITIONS:
            return True
        other = CONDITIONS[p][0]
        if other in dims and other not in params:
            return active(other)
        return applies(space, p, params)

    on = {p for p in dims if active(p)}
    missing = sorted(on - set(params))
    unknown = sorted(set(params) - dims)
    problems = [Problem("no value given for this searched field", p) for p in missing]
    problems += [Problem("not a searched field of this space" + hint(p, sorted(dims)), p) for p in unknown]
    problems += [Problem(f"does not apply with {_link(space, p, params)}", p) for p in sorted((set(params) & dims) - on)]
    if problems:
        raise SpaceError(problems)
    data = space.model_dump(mode="python")
    for path in sorted(dims - on):
        set_path(data, path.split("."), _default_at(path))
    for path, value in params.items():
        set_path(data, path.split("."), value)
    resolved = Space.model_validate(data)
    resolved._source = space.source
    return resolved


def is_resolved(space: Space) -> bool:
    return not dimensions(space)


def to_dict(space: Space) -> dict[str, Any]:
    """Plain JSON-able data of the space (round-trips through :func:`space_from_dict`)."""
    return space.model_dump(mode="json")



def set_path(data: dict, keys: list[str], value: Any) -> None:
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value

