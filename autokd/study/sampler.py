"""The sampler of a study: the one ``search.sampler`` names, seeded so that resumes and parallel workers differ."""

from __future__ import annotations

import hashlib

import optuna

from autokd.errors import Problem, StudyError
from autokd.space import Space
from autokd.study.storage import quiet_optuna


def derive_seed(seed: int, n_existing: int, worker_index: int = 0) -> int:
    """A sampler seed for a study that already holds ``n_existing`` trials (same seed, same history -> same seed).

    ``worker_index`` (``--worker-index``) is mixed in so that workers started together do not propose the same
    trials in lockstep; worker 0 keeps the single-worker seed."""
    tag = f"autokd:{seed}:{n_existing}" + (f":w{worker_index}" if worker_index else "")
    digest = hashlib.sha256(tag.encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_sampler(space: Space, *, n_existing: int = 0, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that ``search.sampler`` names, with its warm-up exposed and a resume-safe seed.

    ``gp`` (the default) is Optuna's GPSampler (a Gaussian process per objective; log expected hypervolume
    improvement for two or more objectives), random for its first ``search.startup_trials`` COMPLETE trials. With
    other workers' trials RUNNING it needs no liar: it conditions on them itself (q-batch logEHVI with the running
    trials' params as pending points), so a proposal equal to a running trial has next to no expected improvement;
    one that still repeats a COMPLETE or RUNNING trial is pruned by the objective (``duplicate_of``). Its objective
    is taken as noisy (``deterministic_objective=False``): training is. It models the values it is told, not their
    ranks, which is why studies tell it log10 costs (:data:`autokd.objective.COST_SCALE`): on the default space it
    then reached random search's 100-trial hypervolume in 34 trials, TPE in 61 (``bench/samplers.py``); told raw
    BitOps (five decades) it found less than random search.

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
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.startup_trials)
    raise StudyError(Problem(f"unknown sampler {s.sampler!r} (valid: tpe, nsga2, random, gp)", "search.sampler"))
