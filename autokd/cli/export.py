"""``autokd export``: write a trial's trained model as ONNX, TorchScript or a state_dict (commands added here)."""

from __future__ import annotations

from autokd.cli import app  # noqa: F401  (commands register on `app`)
