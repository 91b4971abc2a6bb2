"""A registry of model families (as timm does): a family is a name, a builder and the space fields it uses.

Architectures are data: the builder receives plain keyword arguments (resolved from the space), never a subclass per
variant. Every model has its first layer first in ``modules()`` and its classifier as ``model.classifier``, which is
what compression relies on to keep them at higher precision / unpruned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., nn.Module]
    fields: frozenset[str]  # ModelSpec fields this family reads (others must not be searched)
    student: bool
    teacher: bool


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, fields: set[str], student: bool = True, teacher: bool = False):
    """Decorator: ``@register_family("mobilenetv2", fields={...})`` on a builder ``fn(num_classes, in_channels, **arch)``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is already registered")
        _FAMILIES[name] = Family(name, fn, frozenset(fields), student, teacher)
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the modules registers their families.
    from autokd.models import mobilenet, resnet  # noqa: F401


def student_families() -> list[str]:
    _load_builtin()
    return sorted(n for n, f in _FAMILIES.items() if f.student)


def teacher_families() -> list[str]:
    _load_builtin()
    return sorted(n for n, f in _FAMILIES.items() if f.teacher)


def family_fields(name: str) -> frozenset[str]:
    _load_builtin()
    return _FAMILIES[name].fields


def build_model(family: str, *, num_classes: int, in_channels: int, **arch: Any) -> nn.Module:
    """Build a model of a registered family from plain architecture arguments."""
    _load_builtin()
    if family not in _FAMILIES:
        raise KeyError(f"unknown model family {family!r} (valid: {', '.join(sorted(_FAMILIES))})")
    fam = _FAMILIES[family]
    return fam.build(num_classes=num_classes, in_channels=in_channels,
                     **{k: v for k, v in arch.items() if k in fam.fields})


def build_student(model_spec: Any, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build the student described by a resolved ``ModelSpec``."""
    arch = model_spec.model_dump()
    family = arch.pop("family")
    return build_model(family, num_classes=num_classes, in_channels=in_channels, **arch)


def build_teacher(teacher_spec: Any, *, num_classes: int, in_channels: int) -> nn.Module:
    """Build the teacher described by a ``TeacherSpec``."""
    return build_model(teacher_spec.family, num_classes=num_classes, in_channels=in_channels,
                       width=teacher_spec.width, depth=teacher_spec.depth)
