"""Which trials to export, and their trained models, from where the search stored them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autokd.errors import AutokdError, Problem
from autokd.objective import MODEL_ATTR


@dataclass
class TrialModel:
    """A trial's trained model (eval mode, CPU) with what the study recorded about it."""

    trial: FrozenTrial
    model: nn.Module
    record: dict[str, Any]  # what the saved model file carries beside the weights (params, settings, metrics)

    @property
    def number(self) -> int:
        return self.trial.number


def _ranges(numbers: list[int]) -> str:
    """``0-5, 7, 9-10`` ("none" for no numbers)."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


def has_model(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and (MODEL_ATTR in t.user_attrs or "model_path" in t.user_attrs)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials on the study's Pareto front (the front ``autokd report`` shows), by number."""
    from autokd.report.pareto import pareto_front

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    dirs = [d.name.lower() for d in study.directions]
    idx = pareto_front([list(t.values) for t in complete], directions=dirs) if complete else []
    return sorted((complete[i] for i in idx), key=lambda t: t.number)


def select_trials(study: optuna.Study, *, trial: int | None, pareto: bool) -> list[FrozenTrial]:
    """The trial numbered ``trial``, or the Pareto trials; each must have a saved model (else one located line)."""
    trials = study.get_trials(deepcopy=False)
    if pareto:
        chosen = pareto_trials(study)
        if not chosen:
            raise AutokdError(Problem(f"study {study.study_name!r} has no COMPLETE trial yet: no Pareto front",
                                      file="--pareto"))
    else:
        by_number = {t.number: t for t in trials}
        if trial not in by_number:
            models = [t.number for t in trials if has_model(t)]
            raise AutokdError(Problem(f"no trial {trial} in study {study.study_name!r} (trials: "
                                      f"{_ranges(list(by_number))}; with a model: {_ranges(models)})",
                                      file="--trial"))
        chosen = [by_number[trial]]
    for t in chosen:
        if not has_model(t):
            raise AutokdError(Problem(no_model_reason(t), file="--pareto" if pareto else "--trial"))
    return chosen


def no_model_reason(t: FrozenTrial) -> str:
    if t.state != TrialState.COMPLETE:
        why = t.user_attrs.get("fail_reason") or t.user_attrs.get("stopped_reason")
        if t.user_attrs.get("duplicate_of") is not None:
            why = f"a duplicate of trial {t.user_attrs['duplicate_of']}"
        return f"trial {t.number} is {t.state.name}{f' ({why})' if why else ''}: it has no trained model"
    return f"trial {t.number} has no saved model (its search kept no models: no artifact store)"


def load(study: optuna.Study, t: FrozenTrial, *, artifacts: Any = None) -> TrialModel:
    """The trained model of trial ``t`` from the study's artifact store (``artifacts``: a folder or store that
    overrides the one the search recorded); problems become one ``--trial`` line."""
    from autokd.models.saved import LegacyModelFile
    from autokd.study import load_trial_model

    try:
        model, record = load_trial_model(t, artifacts=artifacts, study=study)
    except AutokdError:
        raise
    except LegacyModelFile:
        raise AutokdError(Problem(f"trial {t.number}'s model was saved by autokd 0.1 as a pickled module: load it "
                                  "in Python with autokd.load_trial_model(path, trust_pickle=True) if you trust it",
                                  file="--trial")) from None
    except (OSError, ArtifactNotFound) as exc:
        where = t.user_attrs.get(MODEL_ATTR) or t.user_attrs.get("model_path")
        raise AutokdError(Problem(f"trial {t.number}'s model {where} cannot be read ({type(exc).__name__}: {exc}); "
                                  "give the artifact folder with --artifacts DIR", file="--artifacts")) from None
    except (ValueError, RuntimeError, KeyError) as exc:
        raise AutokdError(Problem(f"trial {t.number}'s saved model cannot be rebuilt: {exc}",
                                  file="--trial")) from None
    return TrialModel(t, model.cpu().eval(), record)
