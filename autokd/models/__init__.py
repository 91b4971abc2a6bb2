"""Architectures as data: a registry of families and one builder (``build_model``)."""

from autokd.models.registry import build_model, build_student, build_teacher, family_fields, register_family

__all__ = ["build_model", "build_student", "build_teacher", "family_fields", "register_family"]
