"""``search.sampler: gp``: Optuna's GPSampler built like the others (warm-up from the space, resume-safe seed),
reproducible, proposing only the space's values, not re-proposing a RUNNING trial, and usable from the CLI."""

from __future__ import annotations

import copy
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autokd.errors import StudyError
from autokd.sampling import sample
from autokd.space import dimensions, space_from_dict
from autokd.study.sampler import derive_seed, make_sampler

GRID = {"model.width_mult": [0.25, 0.5, 1.0], "model.kernel_size": [3, 5], "model.expand_ratio": [2, 4, 6],
        "compress.prune_ratio": [0.0, 0.25, 0.5], "compress.bits": [32, 8, 4, 2]}


def gp_space(tiny_space, *, startup: int = 3, seed: int = 0):
    s = copy.deepcopy(tiny_space)
    s["model"].update({k.split(".")[1]: {"choices": v} for k, v in GRID.items() if k.startswith("model.")})
    s["compress"] = {k.split(".")[1]: {"choices": v} for k, v in GRID.items() if k.startswith("compress.")}
    s["distill"]["kd"] = True
    s["search"].update({"sampler": "gp", "startup_trials": startup, "seed": seed, "objectives": ["bitops"]})
    return space_from_dict(s)


DISTS = {k: CategoricalDistribution(v) for k, v in GRID.items()}
# eight COMPLETE trials the Gaussian process models (its warm-up is over: gp_space's startup_trials is 3)
HISTORY = [dict(zip(GRID, values)) for values in
           [(0.25, 3, 2, 0.0, 32), (1.0, 5, 6, 0.5, 2), (0.5, 3, 4, 0.25, 8), (0.25, 5, 6, 0.5, 4),
            (1.0, 3, 2, 0.0, 8), (0.5, 5, 2, 0.5, 32), (0.25, 3, 4, 0.25, 2), (1.0, 5, 4, 0.0, 4)]]


def add_history(study: optuna.Study) -> None:
    for p in HISTORY:
        study.add_trial(create_trial(params=p, distributions=DISTS, values=fake_values(p)))


def fake_values(params: dict) -> list[float]:
    """A smooth two-objective stand-in for training: wider and more bits -> more accurate and dearer."""
    width, bits, prune = params["model.width_mult"], params["compress.bits"], params["compress.prune_ratio"]
    acc = 0.9 + 0.05 * width + 0.01 * min(bits, 8) / 8 - 0.03 * prune + 0.002 * params["model.kernel_size"]
    cost = width ** 2 * params["model.expand_ratio"] * bits * (1 - prune) * params["model.kernel_size"]
    return [acc, cost]


def drive(space, n: int) -> list[dict]:
    """``n`` ask/tell rounds with the sampler autokd builds, params drawn as a search draws them."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space))
    proposed = []
    for _ in range(n):
        trial = study.ask()
        params = sample(space, trial).params
        proposed.append(params)
        study.tell(trial, fake_values(params))
    return proposed


def test_gp_is_built_with_the_space_warm_up(tiny_space):
    sampler = make_sampler(gp_space(tiny_space, startup=5))
    assert isinstance(sampler, optuna.samplers.GPSampler)
    assert sampler._n_startup_trials == 5  # the space's search.startup_trials, as TPE gets


def test_gp_is_seeded_reproducibly_and_proposes_valid_params(tiny_space):
    space = gp_space(tiny_space, startup=3)
    n = 7  # 3 random start-up trials, then 4 proposals of the Gaussian process
    first, again = drive(space, n), drive(space, n)
    assert first == again
    assert drive(gp_space(tiny_space, startup=3, seed=1), n) != first
    dims = {d.path: d.choices for d in dimensions(space)}
    assert set(dims) == set(GRID)
    for params in first:
        assert set(params) == set(dims)
        assert all(params[k] in dims[k] for k in dims)


def test_gp_does_not_repropose_a_running_trial(tiny_space):
    """Other workers' RUNNING trials are pending points of its q-batch acquisition: the proposal it would make
    is not made again while a trial with those params runs."""
    space = gp_space(tiny_space)

    def proposal(running: dict | None) -> dict:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space))
        add_history(study)
        if running is not None:
            study.add_trial(create_trial(params=running, distributions=DISTS, state=TrialState.RUNNING))
        return sample(space, study.ask()).params

    alone = proposal(None)
    assert proposal(None) == alone  # same history, same seed: the same proposal
    assert proposal(alone) != alone


@pytest.mark.parametrize("builder, recorded", [("autokd", True), ("autokd", False), ("optuna", True)])
def test_gp_does_not_repropose_a_trial_early_stopping_stopped(tiny_space, builder, recorded):
    """A stopped trial is PRUNED, which Optuna's GPSampler never reads: it proposed that configuration again and
    again (each pruned as a duplicate; 50 in a row end the run). autokd's GP sees a stopped trial as COMPLETE with
    its ``stopped_values`` (``recorded``), or else as pending. The ``optuna`` case shows that the plain sampler
    does repeat itself, so the check can fail."""
    space = gp_space(tiny_space)
    sampler = make_sampler(space) if builder == "autokd" else optuna.samplers.GPSampler(
        seed=derive_seed(space.search.seed, 0), n_startup_trials=space.search.startup_trials)  # as autokd seeds it
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    add_history(study)
    stopped = []
    for _ in range(4):  # every proposal is stopped by early stopping
        trial = study.ask()
        params = sample(space, trial).params
        stopped.append(params)
        trial.set_user_attr("stopped_reason", "stopped early (test)")
        if recorded:  # the cheaper trial that stopped it ended at 0.9: it would end no higher
            trial.set_user_attr("stopped_values", [0.9, fake_values(params)[1]])
        study.tell(trial, state=TrialState.PRUNED)
    repeats = sum(stopped[i] in stopped[:i] for i in range(len(stopped)))
    if builder == "autokd":
        assert repeats == 0, stopped
    else:
        assert repeats > 0, stopped


def test_the_gp_view_shows_stopped_trials_complete_with_their_values_or_pending():
    from autokd.study.sampler import _GPView

    dist = {"x": CategoricalDistribution([1, 2, 3])}
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(params={"x": 1}, distributions=dist, values=[0.9, 1.0]))
    study.add_trial(create_trial(params={"x": 2}, distributions=dist, state=TrialState.PRUNED,
                                 user_attrs={"stopped_reason": "r", "stopped_values": [0.8, 2.0]}))
    study.add_trial(create_trial(params={"x": 3}, distributions=dist, state=TrialState.PRUNED,
                                 user_attrs={"stopped_reason": "r"}))  # stopped before values were recorded
    study.add_trial(create_trial(params={"x": 1}, distributions=dist, state=TrialState.PRUNED,
                                 user_attrs={"duplicate_of": 0}))  # a duplicate: not shown
    view = _GPView(study)
    complete = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [(t.number, t.values) for t in complete] == [(0, [0.9, 1.0]), (1, [0.8, 2.0])]
    both = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    assert [(t.number, t.state) for t in both] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE),
                                                   (2, TrialState.RUNNING)]
    assert len(view._get_trials(deepcopy=False, states=(TrialState.PRUNED,))) == 3  # asked for PRUNED: as they are
    assert study.trials[1].state == TrialState.PRUNED  # the study itself is untouched
    assert view.directions == study.directions


def test_the_gp_view_shows_a_linear_study_its_costs_as_log10():
    from autokd.study.sampler import _GPView

    dist = {"x": CategoricalDistribution([1, 2])}
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(params={"x": 1}, distributions=dist, values=[0.9, 1e6]))
    study.add_trial(create_trial(params={"x": 2}, distributions=dist, state=TrialState.PRUNED,
                                 user_attrs={"stopped_reason": "r", "stopped_values": [0.8, 1e4]}))
    shown = _GPView(study, log_costs=True)._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.values for t in shown] == [[0.9, 6.0], [0.8, 4.0]]
    assert study.trials[0].values == [0.9, 1e6]  # stored values untouched


def test_gp_on_a_study_made_before_log10_costs_proposes_as_on_a_new_one(tiny_space):
    """A study without autokd.cost_scale holds raw costs; the GP must propose from their log10, exactly as it does
    in a new study told log10 costs (the same history otherwise)."""
    from autokd.study import ATTR_COST_SCALE

    space = gp_space(tiny_space)

    def proposal(scale: str | None, raw_seen: bool = False) -> dict:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space))
        if scale is not None:
            study.set_user_attr(ATTR_COST_SCALE, scale)
        for p in HISTORY:
            acc, cost = fake_values(p)
            told = cost if scale is None else math.log10(cost)
            study.add_trial(create_trial(params=p, distributions=DISTS, values=[acc, told]))
        return sample(space, study.ask()).params

    assert proposal(None) == proposal("log10")  # old study (raw values) == new study (log10 values)
    raw = optuna.samplers.GPSampler(seed=derive_seed(space.search.seed, 0), n_startup_trials=space.search.startup_trials)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=raw)
    add_history(study)
    assert sample(space, study.ask()).params != proposal(None)  # raw costs would have changed the proposal


def test_an_unknown_sampler_names_the_valid_ones(tiny_space):
    space = gp_space(tiny_space)
    bogus = space.model_copy(update={"search": space.search.model_copy(update={"sampler": "bogus"})})
    with pytest.raises(StudyError, match="valid: tpe, nsga2, random, gp"):
        make_sampler(bogus)


def test_a_tiny_search_with_gp_completes(cli, space_file, tiny_space, tmp_path):
    s = copy.deepcopy(tiny_space)
    s["model"]["kernel_size"] = {"choices": [3, 5]}  # 8 configurations with KD on/off
    s["search"].update({"n_trials": 4, "startup_trials": 1})
    url = f"sqlite:///{tmp_path}/gp.db"
    res = cli("search", space_file(s), "--storage", url, "--device", "cpu", "--set", "search.sampler=gp")
    assert res.code == 0, res.err
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    # after the one start-up trial (and its KD twin, enqueued) the Gaussian process proposed the next one
    assert any(k.startswith("gp:relative_params") for t in trials for k in t.system_attrs)


def _finished(n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    import numpy as np

    rng = np.random.default_rng(seed)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    return [create_trial(params={"x": float(rng.random())}, distributions=dist,
                         values=[float(rng.random()), float(rng.random())]) for _ in range(n)]


def _numbered(trials):
    for i, t in enumerate(trials):
        t.number = i
    return trials


def test_the_gp_models_a_bounded_set_front_recent_and_a_sample():
    from autokd.report.pareto import pareto_front
    from autokd.study.sampler import bounded

    done = _numbered(_finished(1000))
    running = create_trial(state=TrialState.RUNNING, params={}, distributions={})
    running.number = 1000
    kept = bounded(done + [running], 300, directions=["maximize", "minimize"], seed=3)
    assert len(kept) == 300 and running in kept  # pending points always stay
    numbers = {t.number for t in kept}
    assert len(numbers) == 300  # no trial twice
    front = pareto_front([t.values for t in done], directions=["maximize", "minimize"])
    assert {done[i].number for i in front} <= numbers  # the front decides the improvement: all of it
    assert set(range(900, 1000)) <= numbers  # the most recent trials
    assert len(numbers & set(range(0, 800))) > 100  # and a sample of the rest
    again = bounded(done + [running], 300, directions=["maximize", "minimize"], seed=3)
    assert [t.number for t in again] == [t.number for t in kept]  # deterministic
    assert bounded(done[:50], 300, directions=["maximize", "minimize"], seed=3) == done[:50]  # small: all of it


def test_a_capped_gp_proposes_in_bounded_time_on_a_big_study(tiny_space):
    import time

    from autokd.study import sampler as sampler_mod

    import numpy as np

    sp = space_from_dict(tiny_space, overrides=["search.sampler=gp"])
    study = optuna.create_study(directions=["maximize", "minimize"])
    dims = {d.path: d for d in dimensions(sp)}
    dists = {p: CategoricalDistribution(d.choices) for p, d in dims.items()}
    rng = np.random.default_rng(0)
    for _ in range(400):
        params = {p: d.choices[int(rng.integers(len(d.choices)))] for p, d in dims.items()}
        study.add_trial(create_trial(params=params, distributions=dists,
                                     values=[float(rng.random()), float(rng.random())]))
    seen = []
    real = sampler_mod.bounded

    def spy(trials, cap, **kw):
        out = real(trials, cap, **kw)
        seen.append((len(trials), len(out)))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sampler_mod, "bounded", spy)
        study.sampler = make_sampler(sp)
        start = time.monotonic()
        trial = study.ask()
        sample(sp, trial)
    assert seen and seen[0][0] >= 400 and seen[0][1] == sampler_mod.GP_MAX_TRIALS
    assert time.monotonic() - start < 60
