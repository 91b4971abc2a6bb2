"""Reports as plain data (fronts, KD gains); :mod:`autokd.report.render` and :mod:`autokd.report.plot` draw them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autokd.report.pareto import dominates, hypervolume_2d, pareto_front, pareto_info

__all__ = ["dominates", "hypervolume_2d", "pareto_front", "pareto_info", "study_report"]


def study_report(records: Sequence[dict[str, Any]], *, directions: Sequence[Any], study: str | None = None,
                 metric_names: Sequence[str] | None = None, include_all: bool = False,
                 dataset_sizes: dict[str, int] | None = None, with_kd: bool = True,
                 teacher: dict[str, Any] | None = None, margin: float = 1.0,
                 design: dict[str, Any] | None = None, sampler_pairs: bool = False) -> dict[str, Any]:
    """Everything ``autokd report`` shows, as one JSON-able dict: :func:`pareto_info` plus, under ``"kd"``,
    :func:`autokd.report.kd_gain.kd_analysis` (paired gains, orthogonality per technique, fronts, verdict).

    The KD analysis uses the first cost objective (``metric_names[1]``) for its fronts; each shown trial gains a
    ``"twin"`` key (its KD twin's number, or ``None``). ``margin`` is the orthogonality margin in accuracy
    points (``--margin``; the JSON gives it as a fraction, like every gain); ``teacher`` is the teacher summary
    the search recorded; ``design`` the study's design record (``autokd.design``), whose pairs then decide the
    verdicts (``sampler_pairs``: the sampler's pairs join the model).
    """
    info = pareto_info(records, directions=directions, study=study, metric_names=metric_names,
                       include_all=include_all, dataset_sizes=dataset_sizes)
    if not with_kd:
        return info
    from autokd.report.kd_gain import kd_analysis

    names = list(metric_names or [])
    cost = names[1] if len(names) > 1 else "flops"
    kd = kd_analysis(list(records), cost_metric=cost, margin=margin / 100.0, teacher=teacher, design=design,
                     sampler_pairs=sampler_pairs)
    twins = {p["on"]: p["off"] for p in kd["pairs"]} | {p["off"]: p["on"] for p in kd["pairs"]}
    for t in info["trials"]:
        t["twin"] = twins.get(t["number"])
    info["kd"] = kd
    return info
