"""Reports as plain data (fronts, KD gains); :mod:`autokd.report.render` draws them."""

from autokd.report.pareto import dominates, pareto_front, pareto_info

__all__ = ["dominates", "pareto_front", "pareto_info"]
