"""The Optuna study of a space and its workers, by concern:

- :mod:`~autokd.study.storage`: storage URLs, race-free create/load, space identity;
- :mod:`~autokd.study.sampler`: the sampler and its resume- and worker-safe seed;
- :mod:`~autokd.study.twins`: KD twins, enqueued once;
- :mod:`~autokd.study.recovery`: trials of dead or interrupted workers, re-queued once;
- :mod:`~autokd.study.artifacts`: trial models in Optuna's artifact store;
- :mod:`~autokd.study.runner`: one worker run to the target;
- :mod:`~autokd.study.records`: the study as plain data for the report.
"""

from autokd.study.artifacts import default_artifacts_dir, load_trial_model, open_artifact_store
from autokd.study.records import build_report, trial_records
from autokd.study.recovery import recover_stale_trials
from autokd.study.runner import MAX_DUPLICATES_IN_A_ROW, SearchResult, kd_possible, resolve_device, run_search
from autokd.study.sampler import derive_seed, make_sampler
from autokd.study.storage import (ATTR_COST_SCALE, ATTR_HASH, ATTR_SPACE, ATTR_TEACHER, ATTR_VERSION, STUDIES_DIR,
                                  check_study_name, cost_scale, count_states, create_or_load_study, default_storage, directions,
                                  ensure_writable, load_study, metric_names, objective_names, open_existing_study,
                                  open_storage, quiet_optuna)
from autokd.study.twins import KD_PARAM, enqueue_missing_twins, kd_methods, kd_searched, twin_params

__all__ = [
    "ATTR_COST_SCALE", "ATTR_HASH", "ATTR_SPACE", "ATTR_TEACHER", "ATTR_VERSION", "KD_PARAM", "MAX_DUPLICATES_IN_A_ROW", "STUDIES_DIR",
    "SearchResult", "build_report", "check_study_name", "cost_scale", "count_states", "create_or_load_study", "default_artifacts_dir", "default_storage",
    "derive_seed", "directions", "enqueue_missing_twins", "ensure_writable", "kd_methods", "kd_possible", "kd_searched",
    "load_study", "load_trial_model", "make_sampler", "metric_names", "objective_names", "open_artifact_store", "open_existing_study", "open_storage", "quiet_optuna",
    "recover_stale_trials", "resolve_device", "run_search", "trial_records", "twin_params",
]
