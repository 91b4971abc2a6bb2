"""A study as plain data: trial records, and the report built from them."""

from __future__ import annotations

from typing import Any

import optuna

from autokd.early_stop import STOPPED_EPOCH_ATTR, STOPPED_REASON_ATTR
from autokd.objective import NUMERICS_ATTR
from autokd.sampling import DESIGN_POINT_ATTR, replicate_of
from autokd.space import Space
from autokd.study.design import ATTR_DESIGN
from autokd.study.storage import ATTR_TEACHER, metric_names
from autokd.study.twins import kd_searched


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Plain data of every trial (the input of the report functions)."""
    records = []
    for t in study.get_trials(deepcopy=False):
        records.append({
            "number": t.number,
            "state": t.state.name,
            "values": list(t.values) if t.values is not None else None,
            "params": dict(t.params),
            # what a queued trial will run (Optuna's record of the enqueued params): a sibling that is WAITING, or
            # failed before it sampled, is placed in its sibling set by it
            "queued_params": dict(t.system_attrs.get("fixed_params") or {}) or None,
            "metrics": dict(t.user_attrs.get("metrics", {})),
            "settings": dict(t.user_attrs.get("settings", {})),
            "seconds": t.user_attrs.get("seconds"),
            "fail_reason": t.user_attrs.get("fail_reason"),
            "twin_of": t.user_attrs.get("twin_of"),
            "retry_of": t.user_attrs.get("retry_of"),
            "duplicate_of": t.user_attrs.get("duplicate_of"),
            "stopped_reason": t.user_attrs.get(STOPPED_REASON_ATTR),
            "stopped_epoch": t.user_attrs.get(STOPPED_EPOCH_ATTR),
            "teacher": t.user_attrs.get("teacher"),
            "teacher_hash": t.user_attrs.get("teacher_hash"),
            "numerics": t.user_attrs.get(NUMERICS_ATTR),  # None: trained before autokd recorded it (unknown)
            "design_point": t.user_attrs.get(DESIGN_POINT_ATTR),  # None: not a design point (the sampler's)
            "replicate": replicate_of(t.user_attrs),
        })
    return records


def build_report(study: optuna.Study, space: Space, *, include_all: bool = False,
                 margin: float | None = None, sampler_pairs: bool = False) -> dict[str, Any]:
    """The report data of a study (Pareto front, and the KD section when distill.kd is searched).

    ``margin`` is the orthogonality margin in accuracy points (``--margin``; default: the design's
    ``search.design.margin``, else 1); ``sampler_pairs`` puts the sampler's pairs into the verdict model beside a
    design's."""
    if margin is None:
        margin = space.search.design.margin if space.search.design is not None else 1.0
    from autokd.report import study_report

    return study_report(trial_records(study), directions=[d.name for d in study.directions], study=study.study_name,
                        metric_names=metric_names(space), include_all=include_all,
                        dataset_sizes=study.user_attrs.get("autokd.dataset_sizes"), with_kd=kd_searched(space),
                        teacher=study.user_attrs.get(ATTR_TEACHER), margin=margin,
                        design=study.user_attrs.get(ATTR_DESIGN), sampler_pairs=sampler_pairs)
