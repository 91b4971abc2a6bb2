"""Does knowledge distillation help, and is its help orthogonal to the other techniques?

Park, Yoo & Kwak (2020), *On the Orthogonality of Knowledge Distillation with Other Techniques*, ask whether KD's
accuracy gain survives when it is combined with pruning, quantization, label smoothing, augmentation and
architecture changes. An autokd study answers the same question for one search: trials come in **KD twins** --
identical searched settings and seeds, ``distill.kd`` True vs False -- so KD's effect is measured *within* each
configuration. :func:`kd_analysis` puts the pieces together; each lives in its own module:

* :mod:`~autokd.report.pairing` -- twins -> pairs by the recorded ``twin_of`` link; lost pairs with reasons.
* :mod:`~autokd.report.stats` -- the overall gain: Student-t interval, Wilcoxon signed-rank p, Hodges-Lehmann,
  outliers, relative error reduction.
* :mod:`~autokd.report.orthogonality` -- the gain modelled on all other factors at once (HC3, Freedman-Lane
  permutation tests, Holm), equivalence against the margin, collinearity, heterogeneity across configurations.
* :mod:`~autokd.report.pareto` -- KD-on vs KD-off fronts and hypervolumes.
* :mod:`~autokd.report.verdict` -- the words, from the numbers.

**Estimand.** The mean KD gain over the configurations the study visited. A sampler such as TPE does not draw
configurations independently from the space, so this is not the mean over all configurations of the space. The unit
of analysis is the configuration: with ``train.repeats`` R > 1 a pair's gain is the mean of its R repeat-by-repeat
gains, and intervals and tests count configurations, not repeats.

**Units.** Gains, intervals and the margin are fractions of accuracy (0.01 = 1 point) throughout the JSON.

Plain data in (trial dicts from :func:`autokd.study.trial_records`), plain data out; no optuna, torch or rich.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


from autokd.report import orthogonality, stats
from autokd.report.stats import jsonable
from autokd.report.methods import SET_ESTIMAND, method_differences, methods_sentence, per_method, set_pairs
from autokd.report.pairing import KD_PARAM, Pair, pair_trials
from autokd.report.pareto import front_comparison, is_stopped
from autokd.report.orthogonality import MIN_HETEROGENEITY_CONFIGURATIONS
from autokd.report.verdict import MIN_VERDICT_PAIRS, overall_word, survival_sentence, verdict_text, warnings_for

__all__ = ["kd_analysis", "ESTIMAND"]

# what a report keeps of an orthogonality fit (kd.model, and each method's own)
MODEL_KEYS = ("fitted", "reason", "n_pairs", "n_coefficients", "df_resid", "se", "test", "alpha",
              "equivalence_confidence")

ESTIMAND = ("the mean KD gain (KD on − KD off, paired twins) over the configurations this study visited; the "
            "sampler does not draw configurations independently, so it is not the mean over the whole space")


def _usable(pairs: Sequence[Pair], metric: str) -> list[Pair]:
    return [p for p in pairs if p.gain(metric) is not None]


def _gain_summary(pairs: Sequence[Pair], metric: str, *, seed: int) -> dict[str, Any]:
    kept = _usable(pairs, metric)
    summary = stats.summarize_gain([p.gain(metric) for p in kept], seed=seed).to_dict()
    acc_on = [float(p.on["metrics"][metric]) for p in kept]
    acc_off = [float(p.off["metrics"][metric]) for p in kept]
    summary["relative_error_reduction"] = (stats.relative_error_reduction(acc_on, acc_off)
                                           if metric.endswith("accuracy") else None)
    return summary


# Measured by bench/orthogonality_design.py (autokd.doe's module docstring has the numbers): a planted t0 x t1
# interaction of 1.5 margins biased other techniques' differences by up to 0.23 pts with one replicate of the demo's
# 24-point design; rotated replicates average that aliasing out (0.10 pts at 4 replicates, 0 at a full cycle of 12).
ALIASED_CAVEAT = ("The design is D-optimal for main effects: one replicate's technique differences are not clear of "
                  "two-technique interactions in the gain, so where two techniques interact a third one's verdict can "
                  "be biased (a 1.5-pt interaction moved other differences by up to 0.23 pts in simulation); "
                  "replicates rotate the levels, which averages that bias out (0.10 pts at 4 replicates); a full "
                  "factorial or a resolution-IV fraction has no such bias.")


def _design_section(design: Mapping[str, Any] | None, pairs: Sequence[Pair], designed: Sequence[Pair],
                    analysed: bool, *, margin: float) -> dict[str, Any] | None:
    """``kd.design``: what the design phase was and which pairs the verdicts come from (None: no design ran)."""
    in_design = [p for p in pairs if p.design]
    if not in_design and not design:
        return None
    design = dict(design or {})
    replicates = sorted({int(p.on.get("replicate") or 0) for p in in_design})
    return {"kind": design.get("kind"), "levels": design.get("levels"), "points": design.get("points"),
            "replicates": design.get("replicates"), "replicates_with_pairs": len(replicates),
            "n_pairs": len(in_design), "analysed": "design pairs" if analysed else "all pairs (--with-sampler-pairs)",
            "estimand": design.get("estimand"), "target_half_width": design.get("target_half_width"),
            "margin": margin, "note": design.get("note"), "d_efficiency": design.get("d_efficiency"),
            "held": design.get("held") or {}, "cut": bool(design.get("cut")), "how": design.get("how"),
            "budget_replicates": design.get("budget_replicates"), "asked": design.get("asked"),
            "planned_replicates": design.get("planned_replicates"), "topup": design.get("topup"),
            "caveat": ALIASED_CAVEAT if design.get("kind") == "d_optimal" else None}


def survival_conditioning(trials: Sequence[Mapping]) -> dict[str, Any] | None:
    """``{"on": True, "stopped": n, "conditioned_on_survival": True, "note": ...}`` when early stopping was on in
    the study (``search.early_stop: true`` in the trials' recorded settings; its default is off when
    ``distill.kd`` is searched), else None. Early stopping conditions the KD pairs on the survival of their first
    trial: a twin is made only for a trial that completed."""
    on = any(((t.get("settings") or {}).get("search") or {}).get("early_stop") is True for t in trials)
    if not on:
        return None
    stopped = sum(is_stopped(dict(t)) for t in trials)
    return {"on": True, "stopped": stopped, "conditioned_on_survival": True, "note": survival_sentence(stopped)}


# How a design's pairs are analysed: at exactly the design's levels (no binning, no merging), one pair a level is
# enough to show it (the design balances them)
DESIGN_LEVELS = {"min_level_pairs": 1, "exact_levels": True}


def _factors_of(pairs: Sequence[Pair], *, design: Mapping[str, Any] | None, exclude_prefix: str,
                kd_param: str) -> dict[str, list[Any]]:
    """The other techniques' values of each pair: the design's techniques when ``design`` (its record) is given,
    else every searched param except KD's own settings."""
    names = sorted((design or {}).get("levels") or {k for p in pairs for k in p.params
                                                    if not k.startswith(exclude_prefix) and k != kd_param})
    return {name: [p.params.get(name) for p in pairs] for name in names}


def design_factor_analysis(trials: Iterable[Mapping], *, factors: Sequence[str], margin: float,
                           metric: str = "val_accuracy", seed: int = 0, n_perm: int = 2000,
                           alpha: float = 0.05, method: str | None = None) -> dict[str, Any]:
    """The orthogonality analysis (:func:`orthogonality.analyze`) of a study's design pairs alone, at exactly the
    design's levels (no binning, no merging) of the techniques ``factors``: pooled over the KD methods (one unit
    per sibling set), or with ``method`` that method's own pairs."""
    pairs = pair_trials(t for t in trials if isinstance(t, Mapping)).pairs
    methods = sorted({p.method for p in pairs if p.method is not None})
    if method is not None:
        pairs = [p for p in pairs if p.method == method]
    elif methods:  # the methods' pairs share their KD-off trial: one unit per sibling set (autokd.report.methods)
        pairs = set_pairs(pairs, methods)[0]
    kept = [p for p in pairs if p.design and p.gain(metric) is not None]
    return orthogonality.analyze([p.gain(metric) for p in kept], {f: [p.params.get(f) for p in kept] for f in factors},
                                 margin=float(margin), alpha=alpha, seed=seed, n_perm=n_perm, **DESIGN_LEVELS)


def kd_analysis(trials: Iterable[Mapping], *, metrics: Sequence[str] = ("val_accuracy", "test_accuracy"),
                cost_metric: str = "flops", margin: float = 0.01, teacher: Mapping[str, Any] | None = None,
                seed: int = 0, n_perm: int = 2000, alpha: float = 0.05, kd_param: str = KD_PARAM,
                exclude_prefix: str = "distill.", design: Mapping[str, Any] | None = None,
                sampler_pairs: bool = False) -> dict[str, Any]:
    """Everything the report says about KD, JSON-serialisable.

    The first of ``metrics`` is the primary metric (the orthogonality model, the fronts and the verdict use it).
    ``margin`` (a fraction: 0.01 = 1 point) is the orthogonality margin. The "other techniques" are every searched
    factor except ``distill.*`` (temperature, alpha and the teacher are KD's own settings). ``teacher`` is the
    teacher's summary (accuracies, view accuracy) as the search recorded it.

    Keys: ``metric``, ``estimand``, ``units``, ``n_pairs``, ``n_unpaired``, ``n_pending``, ``pairs``,
    ``lost_pairs``, ``n_lost_pairs``, ``repeats``, ``gain`` (per metric), ``overall``, ``margin``, ``model``,
    ``factors``, ``collinear``, ``heterogeneity``, ``fronts``, ``teacher``, ``early_stop`` (see
    :func:`survival_conditioning`; None when early stopping was off), ``warnings``, ``verdict``; ``design`` when a
    design phase ran.

    **Design.** When the study ran a design phase (its pairs carry ``design_point``; ``design`` is the study's
    ``autokd.design`` record), the verdict table ``factors`` is computed from the design pairs alone, at exactly
    the design's levels (:func:`design_factor_analysis`): its estimand is ``design["estimand"]``. ``n_pairs``,
    ``gain``, ``overall`` and ``pairs`` still cover every pair (each entry of ``pairs`` says ``design``).
    ``sampler_pairs`` puts the sampler's pairs into the model too (the usual binned analysis of all pairs).
    """
    trials = [t for t in trials if isinstance(t, Mapping)]
    if isinstance(metrics, str) or not metrics:
        raise ValueError("metrics must be a non-empty list of metric names")
    if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 < margin < 1):
        raise ValueError(f"margin must be a fraction in (0, 1) (0.01 = 1 accuracy point), got {margin!r}")
    primary = metrics[0]
    pairing = pair_trials(trials, kd_param=kd_param)
    listed = pairing.pairs  # every pair, each KD-on trial with its KD-off partner
    methods = sorted({p.method for p in listed if p.method is not None})
    # With distill.method searched, the methods' pairs share their KD-off trial: the pooled unit is the sibling set
    # (autokd.report.methods), and each method is analysed on its own pairs (kd.methods).
    pairs, partial_sets = set_pairs(listed, methods) if methods else (listed, [])
    gain = {m: _gain_summary(pairs, m, seed=seed) for m in metrics}
    word = overall_word(gain[primary], alpha=alpha)

    usable = kept = _usable(pairs, primary)  # usable: the overall gain's pairs; kept: the verdict model's
    designed = [p for p in kept if p.design]
    use_design = bool(designed) and not sampler_pairs
    if use_design:
        kept = designed
    gains = [p.gain(primary) for p in kept]
    factors = _factors_of(kept, design=design if use_design else None, exclude_prefix=exclude_prefix,
                          kd_param=kd_param)
    repeat_gains = [p.repeat_gains(primary) for p in kept]
    repeats = min((len(r) if r else 1 for r in repeat_gains), default=1)
    repeats_note = None
    if repeats == 1 and any(r and len(r) > 1 for r in repeat_gains):
        without = [f"{p.numbers[0]}/{p.numbers[1]}" for p, r in zip(kept, repeat_gains) if not r or len(r) < 2]
        repeats_note = (f"Pairs {', '.join(without)} kept no per-repeat metrics, so seed noise and heterogeneity "
                        "across configurations are not analysed.")
    # Heterogeneity (tau) is reported from MIN_HETEROGENEITY_CONFIGURATIONS configurations up (validated range).
    with_repeats = repeats > 1 and len(kept) >= MIN_HETEROGENEITY_CONFIGURATIONS
    ortho = orthogonality.analyze(gains, factors, margin=float(margin), alpha=alpha, seed=seed, n_perm=n_perm,
                                  repeat_gains=repeat_gains if with_repeats else None,
                                  **(DESIGN_LEVELS if use_design else {}))
    model = {k: ortho.get(k) for k in MODEL_KEYS}
    heterogeneity = ortho.get("heterogeneity") if with_repeats else None
    fronts = front_comparison(trials, cost_metric=cost_metric, metric=primary, kd_param=kd_param)
    lost = [lp.to_dict() for lp in pairing.lost]
    numbers = [p.numbers for p in usable]  # in the order of the overall summary (its outliers index them)
    refused = [lp.to_dict() for lp in pairing.refused]
    # the teacher's weight hash when every KD trial has one (autokd >= 0.2), else its cache key (older trials)
    kd_on = [p.on for p in pairs if p.on.get("teacher")]
    field = "teacher_hash" if kd_on and all(t.get("teacher_hash") for t in kd_on) else "teacher"
    teacher_keys = [str(t[field]) for t in kd_on]
    # twins trained by different training numerics (a study resumed across an upgrade), or where one side's is
    # unknown (trained before autokd recorded it) and the other's known
    sides = [(p.numbers, p.on.get("numerics"), p.off.get("numerics")) for p in usable]
    mixed = [n for n, a, b in sides if a is not None and b is not None and a != b]
    unsure = [n for n, a, b in sides if (a is None) != (b is None)]
    warnings = warnings_for(summary=gain[primary], lost=lost, teacher=teacher, pair_numbers=numbers,
                            collinear=ortho.get("collinear") or [], refused=refused,
                            unusable=len(pairs) - len(usable), metric=primary, teacher_keys=teacher_keys,
                            repeats_note=repeats_note, mixed_numerics=mixed, unsure_numerics=unsure)
    design_section = _design_section(design, pairs, kept if use_design else designed, use_design,
                                     margin=float(margin))
    survival = survival_conditioning(trials)
    if survival is not None:
        warnings.append(survival["note"])
    if partial_sets:
        warnings.append(f"{len(partial_sets)} configuration(s) have not run every KD method (KD-off trials "
                        f"{', '.join(map(str, partial_sets[:10]))}{' …' if len(partial_sets) > 10 else ''}): left "
                        "out of the pooled gain; each method's own analysis keeps its pairs.")
    method_extra = {}
    if methods:
        def analyse(ps: Sequence[Pair]) -> dict[str, Any]:
            own = _usable(ps, primary)
            if use_design:  # as the pooled table: the method's design pairs, at exactly the design's levels
                own = [p for p in own if p.design]
            summaries = {m: _gain_summary(ps, m, seed=seed) for m in metrics}
            fit = orthogonality.analyze([p.gain(primary) for p in own],
                                        _factors_of(own, design=design if use_design else None,
                                                    exclude_prefix=exclude_prefix, kd_param=kd_param),
                                        margin=float(margin), alpha=alpha, seed=seed, n_perm=n_perm,
                                        **(DESIGN_LEVELS if use_design else {}))
            return {"n_pairs": len(ps), "pairs": [{"on": p.numbers[0], "off": p.numbers[1]} for p in ps],
                    "gain": summaries, "overall": overall_word(summaries[primary], alpha=alpha),
                    "factors": fit.get("factors", []), "model": {k: fit.get(k) for k in MODEL_KEYS}}

        by_method = per_method(listed, analyse)
        method_extra = {"methods": by_method, "n_sets": len(pairs),
                        "method_differences": method_differences(listed, primary, margin=float(margin),
                                                                 alpha=alpha, seed=seed)}
    if design_section is not None and design_section.get("caveat") and use_design:
        warnings.append(design_section["caveat"])
    unit = "sibling set" if methods else "configuration" if repeats > 1 else "pair"
    extra = {} if design_section is None else {"design": design_section}
    return jsonable({**extra, **method_extra,
        "metric": primary,
        "estimand": SET_ESTIMAND if methods else ESTIMAND,
        "units": "fraction of accuracy (0.01 = 1 point)",
        "n_pairs": len(listed),
        "n_unpaired": len(pairing.unpaired),
        "n_pending": len(pairing.pending),
        "pairs": [{"on": p.numbers[0], "off": p.numbers[1], "gain": p.gain(primary),
                   "repeat_gains": p.repeat_gains(primary), "linked": p.linked, "design": p.design,
                   **({"method": p.method} if methods else {})} for p in listed],
        "lost_pairs": lost,
        "n_lost_pairs": len(lost),
        "refused_pairs": refused,
        "repeats": repeats,
        "min_pairs": MIN_VERDICT_PAIRS,
        "gain": gain,
        "overall": word,
        "margin": float(margin),
        "model": model,
        "factors": ortho.get("factors", []),
        "collinear": ortho.get("collinear") or [],
        "heterogeneity": heterogeneity,
        "fronts": fronts,
        "teacher": dict(teacher) if teacher else None,
        "early_stop": survival,
        "warnings": warnings,
        "verdict": verdict_text(word=word, summary=gain[primary], factors=ortho.get("factors", []), model=model,
                                margin=float(margin), heterogeneity=heterogeneity, n_lost=len(lost), unit=unit)
                   + (methods_sentence(method_extra["methods"], primary) if methods else ""),
    })
