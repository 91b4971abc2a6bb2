"""KD twins: every COMPLETE trial gets its twin (same settings and seed, ``distill.kd`` flipped) right after it,
an odd budget still ends with complete pairs, an interrupted or crashed study completes the missing twin first, and
``enqueue_missing_twins`` neither duplicates nor retries twins."""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import autokd.train
from autokd.distill import logit_loss
from autokd.errors import SpaceError
from autokd.space import kd_twins_enabled, space_from_dict
from autokd.study import enqueue_missing_twins, load_study, run_search, twin_params
from autokd.trial_index import sibling_params

# study.ask() on a storage with a heartbeat warns that heartbeats are meant for optimize(); harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def twin_space(tiny: dict, n_trials: int) -> dict:
    """The tiny space plus a continuous dimension (so that two sampled trials never share their parameters) and no
    fine-tune phase (quick trials)."""
    data = copy.deepcopy(tiny)
    data["name"] = "twins"
    data["dataset"]["limit"] = 200  # 200 training images: quick trials (the teacher is trained once per session)
    data["train"]["lr"] = {"low": 0.01, "high": 0.1, "log": True}
    data["compress"] = {"finetune_epochs": 0}
    data["search"] = {"n_trials": n_trials, "sampler": "random"}
    return data


@pytest.fixture
def url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # trial models go beside the database, inside tmp_path
    return f"sqlite:///{tmp_path}/twins.db"


def without_kd(settings: dict) -> dict:
    out = copy.deepcopy(settings)
    out["distill"].pop("kd")
    return out


def assert_complete_pairs(trials: list[optuna.trial.FrozenTrial]) -> None:
    """The COMPLETE trials come in pairs: each has exactly one COMPLETE partner with ``distill.kd`` flipped, the
    other parameters identical, and the same settings (seed included) apart from ``distill.kd``."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and len(complete) % 2 == 0, [t.params for t in complete]
    for t in complete:
        partners = [o for o in complete if o.params == twin_params(t.params)]
        assert len(partners) == 1, (t.number, t.params)
        (other,) = partners
        assert other.params["distill.kd"] is (not t.params["distill.kd"])
        assert other.user_attrs["settings"]["train"]["seed"] == t.user_attrs["settings"]["train"]["seed"]
        assert other.user_attrs["settings"]["distill"]["kd"] is other.params["distill.kd"]
        assert without_kd(other.user_attrs["settings"]) == without_kd(t.user_attrs["settings"])


def assert_twin_of(trials: list[optuna.trial.FrozenTrial], expected: list[int | None]) -> None:
    """``twin_of`` of each trial is ``expected``; a twin is the next trial after its original and has its twin
    parameters."""
    assert [t.user_attrs.get("twin_of") for t in trials] == expected
    for t in trials:
        if "twin_of" in t.user_attrs:
            orig = trials[t.user_attrs["twin_of"]]
            assert t.number == orig.number + 1
            assert t.params == twin_params(orig.params)


def test_every_complete_trial_has_its_twin_next(url, tiny_space):
    events = []
    result = run_search(space_from_dict(twin_space(tiny_space, 4)), storage=url, device="cpu",
                        progress=lambda e, **d: events.append((e, d)))
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert (result.complete, result.ran_this_run, result.stopped) == (4, 4, "done")
    assert_complete_pairs(trials)
    assert_twin_of(trials, [None, 0, None, 2])  # the twin runs right after its original
    assert trials[0].params != trials[2].params  # the sampler proposed a second configuration
    assert [d for e, d in events if e == "study.enqueue"] == [{"number": 0, "reason": "twin"},
                                                               {"number": 2, "reason": "twin"}]
    starts = [d["number"] for e, d in events if e == "trial.start"]
    assert starts == [0, 1, 2, 3]


def test_odd_budget_still_ends_with_complete_pairs(url, tiny_space):
    sp = space_from_dict(twin_space(tiny_space, 3))
    result = run_search(sp, storage=url, device="cpu")
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert result.complete == 4 and result.target == 3 and result.ran_this_run == 4
    assert_complete_pairs(trials)
    assert_twin_of(trials, [None, 0, None, 2])
    # the budget is reached and no twin is missing: a rerun runs nothing
    again = run_search(sp, storage=url, device="cpu")
    assert again.ran_this_run == 0 and again.complete == 4
    assert len(again.study.get_trials()) == 4


def test_interrupted_twin_runs_first_on_resume(url, tiny_space):
    sp = space_from_dict(twin_space(tiny_space, 2))

    def interrupt_the_twin(event, **data):
        if event == "trial.start" and data["number"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(sp, storage=url, device="cpu", progress=interrupt_the_twin)
    study, _ = load_study(storage=url, study_name="twins")
    first, interrupted, queued = study.get_trials()
    assert first.state == TrialState.COMPLETE
    assert interrupted.state == TrialState.FAIL and interrupted.params == twin_params(first.params)
    assert queued.state == TrialState.WAITING
    assert queued.system_attrs["fixed_params"] == twin_params(first.params)

    events = []
    result = run_search(sp, storage=url, device="cpu", progress=lambda e, **d: events.append((e, d)))
    trials = result.study.get_trials()
    # the twin was not enqueued a second time: its FAIL try and its WAITING retry both count as existing
    assert [e for e, _ in events if e == "study.enqueue"] == []
    assert [d["number"] for e, d in events if e == "trial.start"] == [2]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    # the first trial to run after trial 0 is its twin
    assert trials[2].params == twin_params(first.params)
    assert trials[2].user_attrs["retry_of"] == 1
    assert result.complete == 2 and result.ran_this_run == 1
    assert_complete_pairs(trials)


def test_twin_missing_after_a_crash_runs_even_with_the_budget_reached(url, tiny_space, monkeypatch):
    """A process that died after trial 0 but before enqueueing its twin: the rerun enqueues and runs it, although
    the study already holds n_trials COMPLETE trials."""
    import autokd.study

    sp = space_from_dict(twin_space(tiny_space, 1))
    with monkeypatch.context() as mp:
        mp.setattr(autokd.study.runner, "enqueue_missing_twins", lambda study, **kwargs: [])
        first = run_search(sp, storage=url, device="cpu")
    assert [t.state for t in first.study.get_trials()] == [TrialState.COMPLETE]

    events = []
    result = run_search(sp, storage=url, device="cpu", progress=lambda e, **d: events.append(e))
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert_twin_of(trials, [None, 0])
    assert_complete_pairs(trials)
    assert result.ran_this_run == 1 and result.complete == 2
    assert events.index("study.enqueue") < events.index("trial.start")


# --- enqueue_missing_twins on a hand-made study ----------------------------------------------------

DISTS = {"distill.kd": CategoricalDistribution([True, False]),
         "model.width_mult": CategoricalDistribution([0.25, 0.5]),
         "train.lr": FloatDistribution(0.01, 0.1, log=True)}


def P(kd: bool, width: float, lr: float) -> dict:
    return {"distill.kd": kd, "model.width_mult": width, "train.lr": lr}


def add(study, state: TrialState, params: dict, dists: dict | None = None) -> None:
    dists = {k: v for k, v in (dists or DISTS).items() if k in params}
    values = [0.5, 1.0] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, params=params, distributions=dists, values=values))


@pytest.fixture
def handmade():
    study = optuna.create_study(directions=["maximize", "minimize"])
    add(study, TrialState.COMPLETE, P(True, 0.25, 0.01))   # 0: its twin is 1
    add(study, TrialState.COMPLETE, P(False, 0.25, 0.01))  # 1
    add(study, TrialState.COMPLETE, P(True, 0.5, 0.02))    # 2: no twin -> enqueued
    add(study, TrialState.COMPLETE, P(False, 0.25, 0.03))  # 3: its twin 4 FAILED -> not enqueued again
    add(study, TrialState.FAIL, P(True, 0.25, 0.03))       # 4
    add(study, TrialState.COMPLETE, P(False, 0.5, 0.04))   # 5: its twin is WAITING -> not duplicated
    study.enqueue_trial(P(True, 0.5, 0.04))                # 6 (WAITING)
    add(study, TrialState.FAIL, P(True, 0.5, 0.05))        # 7: not COMPLETE -> no twin
    add(study, TrialState.COMPLETE, {"model.width_mult": 0.5, "train.lr": 0.06})  # 8: no KD parameter
    add(study, TrialState.COMPLETE, P(False, 0.5, 0.07))   # 9: no twin -> enqueued
    return study


def test_enqueue_missing_twins_only_where_no_twin_exists(handmade):
    events = []
    assert enqueue_missing_twins(handmade, progress=lambda e, **d: events.append((e, d))) == [2, 9]
    assert events == [("study.enqueue", {"number": 2, "reason": "twin"}),
                      ("study.enqueue", {"number": 9, "reason": "twin"})]
    waiting = handmade.get_trials(states=(TrialState.WAITING,))
    assert [(t.number, t.system_attrs["fixed_params"], t.user_attrs.get("twin_of")) for t in waiting] == [
        (6, P(True, 0.5, 0.04), None),
        (10, P(False, 0.5, 0.02), 2),
        (11, P(True, 0.5, 0.07), 9),
    ]
    # idempotent: the new WAITING twins count as existing
    assert enqueue_missing_twins(handmade) == []
    assert len(handmade.get_trials()) == 12


def test_enqueued_twins_run_next_with_their_parameters(handmade):
    enqueue_missing_twins(handmade)
    ran = []

    def objective(trial):
        params = {k: trial.suggest_categorical(k, d.choices) if isinstance(d, CategoricalDistribution) else
                  trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in DISTS.items()}
        ran.append((trial.number, params))
        return 0.5, 1.0

    handmade.optimize(objective, n_trials=3)
    assert ran == [(6, P(True, 0.5, 0.04)), (10, P(False, 0.5, 0.02)), (11, P(True, 0.5, 0.07))]
    assert enqueue_missing_twins(handmade) == []  # every COMPLETE trial now has its twin


def test_empty_study_and_study_without_kd():
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert enqueue_missing_twins(study) == []
    add(study, TrialState.COMPLETE, {"model.width_mult": 0.25, "train.lr": 0.05})
    assert enqueue_missing_twins(study) == []
    assert len(study.get_trials()) == 1


def test_twin_params():
    assert twin_params(P(True, 0.25, 0.01)) == P(False, 0.25, 0.01)
    assert twin_params(P(False, 0.25, 0.01)) == P(True, 0.25, 0.01)
    original = P(True, 0.5, 0.02)
    twin_params(original)
    assert original == P(True, 0.5, 0.02)  # not modified in place
    with pytest.raises(ValueError, match="distill.kd"):
        twin_params({"model.width_mult": 0.25})


# --- search.kd_twins ---------------------------------------------------------------------------------


def test_kd_twins_default_follows_the_kd_dimension(tiny_space):
    assert kd_twins_enabled(space_from_dict(tiny_space))
    off = copy.deepcopy(tiny_space)
    off["search"]["kd_twins"] = False
    assert not kd_twins_enabled(space_from_dict(off))
    fixed = copy.deepcopy(tiny_space)
    fixed["distill"]["kd"] = True
    assert not kd_twins_enabled(space_from_dict(fixed))


def test_kd_twins_with_fixed_kd_is_a_located_error(cli, space_file):
    text = """\
    version: 1
    name: tw
    dataset:
      name: digits
      image_size: 8
    distill:
      kd: true
    search:
      n_trials: 2
      kd_twins: true
    """
    path = space_file(text)
    res = cli("validate", path)
    assert res.code == 2, (res.out, res.err)
    assert "Traceback" not in res.out + res.err
    assert len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith(f"error: {path}:10: search.kd_twins: "), line
    assert "distill.kd must be {choices: [true, false]}" in line


def test_kd_twins_need_both_kd_values(tiny_space):
    data = copy.deepcopy(tiny_space)
    data["distill"]["kd"] = {"choices": [True]}
    data["search"]["kd_twins"] = True
    with pytest.raises(SpaceError) as exc:
        space_from_dict(data)
    assert [p.path for p in exc.value.problems] == ["search.kd_twins"]


# --- siblings: with distill.method searched, one KD-off partner per configuration, one KD-on trial per method --------

def test_sibling_params_are_one_kd_off_partner_and_one_kd_on_per_method():
    on = {"model.width_mult": 0.25, "distill.kd": True, "distill.method": "dist"}
    off = {"model.width_mult": 0.25, "distill.kd": False}
    methods = ("hinton", "dist", "logit_std")
    assert sibling_params(on, methods) == [off, {**off, "distill.kd": True, "distill.method": "hinton"},
                                           {**off, "distill.kd": True, "distill.method": "logit_std"}]
    assert sibling_params(off, methods) == [{**off, "distill.kd": True, "distill.method": m} for m in methods]
    assert sibling_params(P(True, 0.25, 0.01)) == [twin_params(P(True, 0.25, 0.01))]  # no method: twins
    assert twin_params(on) == off  # the KD-off twin carries no method


def test_a_method_search_runs_every_configuration_off_once_and_on_once_per_method(url, tiny_space, monkeypatch):
    used = []  # the method of every KD loss the training loop built

    def spy(method, **kwargs):
        used.append(method)
        return logit_loss(method, **kwargs)

    monkeypatch.setattr(autokd.train, "logit_loss", spy)
    data = twin_space(tiny_space, 3)
    data["distill"]["method"] = {"choices": ["hinton", "dist", "logit_std"]}
    result = run_search(space_from_dict(data), storage=url, device="cpu")
    trials = load_study(storage=url, study_name="twins")[0].get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert result.complete >= 3 and not [t for t in trials if t.state == TrialState.FAIL]
    configs: dict[tuple, list] = {}
    for t in complete:
        base = tuple(sorted((k, v) for k, v in t.params.items() if not k.startswith("distill.")))
        configs.setdefault(base, []).append(t)
        assert ("distill.method" in t.params) is t.params["distill.kd"]  # a KD-off trial carries no method
        assert t.user_attrs["settings"]["distill"]["method"] == t.params.get("distill.method", "hinton")
    for base, members in configs.items():
        sides = sorted((t.params["distill.kd"], t.params.get("distill.method", "")) for t in members)
        assert sides == [(False, ""), (True, "dist"), (True, "hinton"), (True, "logit_std")], (base, sides)
        seeds = {t.user_attrs["settings"]["train"]["seed"] for t in members}
        assert len(seeds) == 1
    # each KD-on trial trained with its own method's loss
    assert sorted(used) == sorted(t.params["distill.method"] for t in complete if t.params["distill.kd"])


def test_validate_refuses_a_searched_method_without_kd(tiny_space, space_file, cli):
    data = copy.deepcopy(tiny_space)
    data["distill"]["kd"] = False
    data["distill"]["method"] = {"choices": ["hinton", "dist"]}
    res = cli("validate", space_file(data))
    assert res.code == 2
    assert "distill.method" in res.err and "applies only with KD on" in res.err


def test_a_kd_method_counts_only_where_kd_is_on(tiny_space):
    from autokd.space import dimensions, discrete_size

    data = copy.deepcopy(tiny_space)
    data["distill"]["method"] = {"choices": ["hinton", "dist", "logit_std"]}
    assert discrete_size(dimensions(space_from_dict(data))) == (2 * (1 + 3), 0)  # width × (KD off + 3 methods)


# --- a method's own searched settings ---------------------------------------------------------------------------

def test_sibling_params_leave_a_methods_own_settings_to_the_sampler():
    """A method's settings are part of its KD treatment: siblings are the same configuration without them (each
    KD-on sibling draws its own method's settings), and a trial is never its own sibling whatever it drew."""
    on = {"model.width_mult": 0.25, "distill.kd": True, "distill.method": "at", "distill.at.beta": 300.0}
    off = {"model.width_mult": 0.25, "distill.kd": False}
    methods = ("hinton", "at", "pkt")
    assert sibling_params(on, methods) == [off, {**off, "distill.kd": True, "distill.method": "hinton"},
                                           {**off, "distill.kd": True, "distill.method": "pkt"}]
    assert twin_params({k: v for k, v in on.items() if k != "distill.method"}) == off


SETTING_DISTS = {**DISTS, "distill.method": CategoricalDistribution(["hinton", "at"]),
                 "distill.at.beta": CategoricalDistribution([300.0, 1000.0])}


def test_siblings_with_drawn_settings_count_as_there():
    """A KD-on sibling enqueued without its method's settings draws them when it runs: once it has finished, the
    set is complete, and nothing is enqueued again (a key with the settings in it would never match)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    off = {"distill.kd": False, "model.width_mult": 0.25, "train.lr": 0.01}
    add(study, TrialState.COMPLETE, off, SETTING_DISTS)  # 0
    assert enqueue_missing_twins(study, methods=("hinton", "at")) == [0, 0]
    queued = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]
    assert queued == [{**off, "distill.kd": True, "distill.method": m} for m in ("hinton", "at")]
    for fixed in queued:  # run them (the queued params are fixed; the `at` one draws its beta)
        trial = study.ask()
        for name in fixed:
            dist = SETTING_DISTS[name]
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        if trial.params["distill.method"] == "at":
            trial.suggest_categorical("distill.at.beta", [300.0, 1000.0])
        study.tell(trial, [0.5, 1.0])
    assert enqueue_missing_twins(study, methods=("hinton", "at")) == []
    assert enqueue_missing_twins(study, methods=("hinton", "at")) == []


def test_a_search_over_methods_and_their_settings_runs_each_configuration_once_per_side(url, tiny_space):
    """Searched method settings: every configuration runs KD-off once (no two COMPLETE KD-off trials share their
    non-distill settings) and KD-on once per method; only a method's own trials carry its settings."""
    data = twin_space(tiny_space, 2)
    data["distill"]["method"] = {"choices": ["hinton", "at"]}
    data["distill"]["at"] = {"beta": {"choices": [300.0, 1000.0]}}
    run_search(space_from_dict(data), storage=url, device="cpu")
    trials = load_study(storage=url, study_name="twins")[0].get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert not [t for t in trials if t.state == TrialState.FAIL]
    configs: dict[tuple, list] = {}
    for t in complete:
        base = tuple(sorted((k, v) for k, v in t.params.items() if not k.startswith("distill.")))
        configs.setdefault(base, []).append(t)
        assert ("distill.at.beta" in t.params) is (t.params.get("distill.method") == "at")
        if "distill.at.beta" in t.params:
            assert t.user_attrs["settings"]["distill"]["at"]["beta"] == t.params["distill.at.beta"]
    assert configs
    for base, members in configs.items():
        sides = sorted((t.params["distill.kd"], t.params.get("distill.method", "")) for t in members)
        assert sides == [(False, ""), (True, "at"), (True, "hinton")], (base, sides)


def test_validate_refuses_settings_of_a_method_never_run(tiny_space, space_file, cli):
    data = copy.deepcopy(tiny_space)
    data["distill"]["method"] = {"choices": ["hinton", "dist"]}
    data["distill"]["at"] = {"beta": {"choices": [300.0, 1000.0]}}
    res = cli("validate", space_file(data))
    assert res.code == 2 and len(res.error_lines) == 1
    assert "distill.at.beta" in res.err and "applies only with distill.method = at" in res.err


def test_method_settings_count_only_with_their_method(tiny_space):
    from autokd.space import dimensions, discrete_size

    data = copy.deepcopy(tiny_space)
    data["distill"]["method"] = {"choices": ["hinton", "at", "fitnets"]}
    data["distill"]["at"] = {"layers": {"choices": ["all", "last"]}, "beta": {"low": 100.0, "high": 1000.0}}
    # width × (KD off + hinton + at × 2 layer choices + fitnets); at.beta is continuous
    assert discrete_size(dimensions(space_from_dict(data))) == (2 * (1 + 1 + 2 + 1), 1)
