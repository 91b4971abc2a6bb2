"""autokd: declarative AutoML search where architecture, compression and knowledge distillation are joint
hyperparameters, with an honest report of whether KD's gain persists across the other settings.

The public surface (imported lazily, so ``autokd --help`` does not pay for torch)::

    import autokd
    space = autokd.load_space("spaces/mobilenet.yaml", overrides=["train.epochs=1"])
    result = autokd.run_search(space)
    info = autokd.pareto_info(autokd.trial_records(result.study), directions=result.study.directions)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutokdError": "autokd.errors", "SpaceError": "autokd.errors", "StudyError": "autokd.errors",
    "DataError": "autokd.errors", "CacheError": "autokd.errors",
    "Space": "autokd.space", "load_space": "autokd.space", "space_from_dict": "autokd.space",
    "dimensions": "autokd.space",
    "TrialConfig": "autokd.sampling", "sample": "autokd.sampling",
    "load_dataset": "autokd.data", "build_model": "autokd.models",
    "kd_loss": "autokd.distill", "get_teacher": "autokd.teacher",
    "run_config": "autokd.objective", "load_trial_model": "autokd.study",
    "run_search": "autokd.study", "create_or_load_study": "autokd.study", "load_study": "autokd.study",
    "trial_records": "autokd.study",
    "pareto_info": "autokd.report", "study_report": "autokd.report", "kd_analysis": "autokd.report.kd_gain",
    "prune_model": "autokd.compress", "quantize_model": "autokd.compress", "cost_metrics": "autokd.measure",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autokd' has no attribute {name!r}")
