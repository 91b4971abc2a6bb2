"""``autokd schema``: the JSON Schema of a space file (commands added here)."""

from __future__ import annotations

from autokd.cli import app  # noqa: F401  (commands register on `app`)
