"""The sampler of a study: the one ``search.sampler`` names, seeded so that resumes and parallel workers differ."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autokd.early_stop import STOPPED_REASON_ATTR, STOPPED_VALUES_ATTR
from autokd.errors import Problem, StudyError
from autokd.space import Space
from autokd.objective import told_cost
from autokd.study.storage import cost_scale, quiet_optuna


def derive_seed(seed: int, n_existing: int, worker_index: int = 0) -> int:
    """A sampler seed for a study that already holds ``n_existing`` trials (same seed, same history -> same seed).

    ``worker_index`` (``--worker-index``) is mixed in so that workers started together do not propose the same
    trials in lockstep; worker 0 keeps the single-worker seed."""
    tag = f"autokd:{seed}:{n_existing}" + (f":w{worker_index}" if worker_index else "")
    digest = hashlib.sha256(tag.encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _GPView:
    """The study as autokd's GP sampler reads it: early-stopped trials take part, and costs are on the log10 scale.

    Optuna's GPSampler models COMPLETE trials and takes RUNNING ones as pending points; it never reads PRUNED
    trials. A stopped trial (PRUNED, with a ``stopped_reason``) was left out of its model, so it proposed that
    configuration again and again (pruned each time as a duplicate, and after 50 in a row the run ended: found by
    bench/early_stop.py). Here a stopped trial is COMPLETE with its ``stopped_values``: the final accuracy of the
    cheaper trial that stopped it (early stopping judged it would end no higher) at its own costs. One stopped
    before those were recorded is a pending (RUNNING) point: not proposed again, but no information.

    ``log_costs``: a study made before costs were told as log10 (:func:`autokd.study.cost_scale` ``linear``) keeps
    its raw values in the storage, and the GP, which models the values it is told, did worse than random search on
    raw BitOps; this view gives it their log10 instead (stored values untouched).

    Everything else is the study itself. GPSampler reads trials through the private ``Study._get_trials``, which is
    therefore the one method overridden (tests/study/test_sampler.py fails if it stops working)."""

    def __init__(self, study: optuna.Study, *, log_costs: bool = False, cap: int | None = None, seed: int = 0):
        self._study, self._log_costs, self._cap, self._seed = study, log_costs, cap, seed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is None or TrialState.PRUNED in states:
            return trials
        n_values = len(self._study.directions)
        extra = []
        for t in self._study._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=use_cache):
            if STOPPED_REASON_ATTR not in t.user_attrs:
                continue
            values = t.user_attrs.get(STOPPED_VALUES_ATTR)
            state = TrialState.COMPLETE if isinstance(values, list) and len(values) == n_values else \
                TrialState.RUNNING
            if state in states:
                shown = copy.deepcopy(t) if deepcopy else copy.copy(t)
                shown.state = state
                shown.values = values if state == TrialState.COMPLETE else None
                extra.append(shown)
        shown_trials = trials + extra
        if self._cap is not None and len(shown_trials) > self._cap:
            shown_trials = bounded(shown_trials, self._cap, directions=self._study.directions, seed=self._seed)
        if self._log_costs:
            shown_trials = [self._logged(t) for t in shown_trials]
        return shown_trials

    @staticmethod
    def _logged(t: FrozenTrial) -> FrozenTrial:
        if t.state != TrialState.COMPLETE or t.values is None:
            return t
        shown = copy.copy(t)
        shown.values = [t.values[0]] + [told_cost(v, "log10") for v in t.values[1:]]
        return shown


GP_MAX_TRIALS = 300  # trials the GP models at most (its fit grows as n^3: 14.6 s a proposal at 1,000 trials)


def bounded(trials: list[FrozenTrial], cap: int, *, directions: Any, seed: int) -> list[FrozenTrial]:
    """At most ``cap`` of ``trials`` for the GP to model: the RUNNING ones (pending points: never proposed again),
    the Pareto front of the finished ones (where the hypervolume improvement is decided), the most recent ones (where
    the search is now), and a seeded uniform sample of the rest (the GP's picture of the whole space), a third of
    what is left each, in that order of priority. Deterministic for a given set of trials and ``seed``.

    Written here because Optuna's GPSampler has no bound on the trials it fits (a full GP cannot stay under 10 s a
    proposal at 3,000 trials); the hypervolume cost of the bound is measured by ``bench/scale.py``."""
    import numpy as np

    from autokd.report.pareto import pareto_front

    pending = [t for t in trials if t.state != TrialState.COMPLETE]
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    room = cap - len(pending)
    if room <= 0 or len(done) <= room:
        return pending[:cap] + done[:max(0, room)]
    dirs = [str(getattr(d, "name", d)).lower() for d in directions]
    values = np.asarray([t.values for t in done], dtype=float)
    rng = np.random.default_rng([seed, len(done)])
    front = [int(i) for i in pareto_front(values, directions=dirs)]
    chosen: list[int] = []
    if len(front) > room // 3:
        front = sorted(int(i) for i in rng.choice(front, room // 3, replace=False))
    chosen += front
    taken = set(chosen)
    recent = [i for i in range(len(done) - 1, -1, -1) if i not in taken][:(room - len(chosen)) // 2]
    chosen += recent
    taken |= set(recent)
    rest = np.asarray([i for i in range(len(done)) if i not in taken])
    if room > len(chosen) and len(rest):
        chosen += [int(i) for i in rng.choice(rest, min(len(rest), room - len(chosen)), replace=False)]
    return pending + [done[i] for i in sorted(chosen)]


class _GPSampler(optuna.samplers.GPSampler):
    """Optuna's GPSampler reading the study through :class:`_GPView` (stopped trials; log10 costs; at most
    :data:`GP_MAX_TRIALS` trials, see :func:`bounded`)."""

    def __init__(self, *args: Any, max_trials: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_trials = GP_MAX_TRIALS if max_trials is None else max_trials
        self._view_seed = int(kwargs.get("seed") or 0)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        view = _GPView(study, log_costs=cost_scale(study) == "linear", cap=self._max_trials or None,
                       seed=self._view_seed)
        return super().sample_relative(view, trial, search_space)  # type: ignore[arg-type]


def make_sampler(space: Space, *, n_existing: int = 0, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that ``search.sampler`` names, with its warm-up exposed and a resume-safe seed.

    ``gp`` (the default) is Optuna's GPSampler (a Gaussian process per objective; log expected hypervolume
    improvement for two or more objectives), random for its first ``search.startup_trials`` COMPLETE (or stopped)
    trials. With other workers' trials RUNNING it needs no liar: it conditions on them itself (q-batch logEHVI with the running
    trials' params as pending points), so a proposal equal to a running trial has next to no expected improvement;
    one that still repeats a COMPLETE or RUNNING trial is pruned by the objective (``duplicate_of``). Trials early
    stopping stopped are shown to it too, and a study made before costs were told as log10 is shown their log10
    (:class:`_GPView`): Optuna's GP never reads PRUNED trials and would propose a stopped configuration again and
    again. Its objective
    is taken as noisy (``deterministic_objective=False``): training is. It models the values it is told, not their
    ranks, which is why studies tell it log10 costs (:data:`autokd.objective.COST_SCALE`): on the default space it
    then reached random search's 100-trial hypervolume in 34 trials, TPE in 60.5 (``bench/samplers.py``); told raw
    BitOps (five decades) it found less than random search.

    The GP models at most :data:`GP_MAX_TRIALS` trials (:func:`bounded`: the running ones, the Pareto front, the
    most recent and a seeded sample of the rest), so a proposal costs about the same at 3,000 trials as at 300
    (a full GP's fit grows as n^3: 14.6 s a proposal at 1,000 trials).

    TPE runs with ``constant_liar``: trials other workers are running count as bad results, so they are not
    proposed again while they run (a single worker is unaffected)."""
    s = space.search
    seed = derive_seed(s.seed, n_existing, worker_index)
    with quiet_optuna():
        if s.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials, constant_liar=True)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if s.sampler == "gp":
            return _GPSampler(seed=seed, n_startup_trials=s.startup_trials)
    raise StudyError(Problem(f"unknown sampler {s.sampler!r} (valid: tpe, nsga2, random, gp)", "search.sampler"))
