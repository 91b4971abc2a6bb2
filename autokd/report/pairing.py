"""KD twins -> pairs, and the pairs that were lost on the way.

A KD twin is the same configuration (searched settings and seed) trained with ``distill.kd`` flipped. The study
records the link: a twin carries ``twin_of`` = its original's trial number (a retry of a twin keeps the link).
Pairs are made from that link first, and each linked pair is checked: the two trials' searched params and resolved
settings must differ in ``distill.kd`` only (``search.*`` budget fields and where the data lives are ignored).
COMPLETE trials without a link (a sampler may propose a twin by itself) are then matched by params, seed and design
replicate (``replicate``: each replicate trains with its own random streams, so only the same replicate pairs).

Nothing is dropped silently. An original whose every twin FAILED is a **lost pair** (``original``, ``twin``,
``failed_side``, ``reason``); a twin that is still WAITING or RUNNING is **pending** (not lost); a failure whose
retry later completed is not lost either; a twin PRUNED as a duplicate of a trial that already ran
(``duplicate_of``) is not lost.

Plain data in, plain data out: trial dicts as made by :func:`autokd.study.trial_records`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autokd.space.identity import LATER_FIELDS
from autokd.space.schema import METHOD_SETTINGS

KD_PARAM = "distill.kd"
METHOD_PARAM = "distill.method"  # searched KD method: only KD-on trials carry it (their KD-off partner has none)
# Settings that may differ between twins without making them different configurations.
IGNORED_SETTINGS = ({"search"}, {"dataset": {"root", "download"}})
# Settings added by later versions of autokd: a trial recorded before one existed ran at its default (the space hash
# leaves them out while at their default, so such a study resumes), so a missing one reads as its default. Else a
# twin run after an upgrade would be refused as "settings differ" from its original recorded before it.
def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        return {prefix: node}
    return {k: v for name, child in node.items() for k, v in _leaves(child, f"{prefix}.{name}").items()}


LATER_DEFAULTS = {k: v for section, fields in LATER_FIELDS.items() for name, default in fields.items()
                  for k, v in _leaves(default, f"{section}.{name}").items()}


def kd_treatment(path: str) -> bool:
    """Whether the param or setting ``path`` belongs to the KD treatment, not to the configuration: the KD method
    and a method's own settings (``distill.<method>.*``), which only a KD-on trial uses. Sibling sets and pairs
    are formed on what is left."""
    parts = path.split(".")
    return path == METHOD_PARAM or (len(parts) >= 3 and parts[0] == "distill" and parts[1] in METHOD_SETTINGS)

__all__ = ["KD_PARAM", "METHOD_PARAM", "Pair", "LostPair", "Pairing", "pair_trials", "kd_flag", "metric_of", "is_state"]


def is_state(trial: Mapping, state: str) -> bool:
    """``trial["state"]`` is ``state`` (also accepts enum spellings such as ``TrialState.COMPLETE``)."""
    value = trial.get("state")
    return isinstance(value, str) and value.rsplit(".", 1)[-1].upper() == state


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _nested_get(mapping: Any, dotted: str) -> Any:
    node = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def kd_flag(trial: Mapping, kd_param: str = KD_PARAM) -> bool | None:
    """KD on/off: ``params[kd_param]``, else the same dotted path in ``settings``."""
    params = trial.get("params") or {}
    if kd_param in params:
        return _as_bool(params[kd_param])
    return _as_bool(_nested_get(trial.get("settings") or {}, kd_param))


def metric_of(metrics: Any, metric: str) -> float | None:
    """A finite number from ``metrics[metric]``, else None."""
    value = (metrics or {}).get(metric) if isinstance(metrics, Mapping) else None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a param value; bools never equal ints."""
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_freeze(v) for v in value))
    return value


@dataclass(frozen=True)
class Pair:
    """One KD twin: the KD-on trial, the KD-off trial and their shared searched params (without the KD flag).

    ``linked`` says whether the pair came from the study's ``twin_of`` link (else: matched by params and seed)."""

    on: dict = field(repr=False)
    off: dict = field(repr=False)
    params: dict
    seed: Any = None
    linked: bool = True
    method: str | None = None  # the KD-on trial's searched distill.method (None when the method is not searched)

    @property
    def numbers(self) -> tuple[int, int]:
        return int(self.on["number"]), int(self.off["number"])

    @property
    def design(self) -> bool:
        """Whether both trials are the same point of the study's design phase (``design_point`` recorded)."""
        a, b = self.on.get("design_point"), self.off.get("design_point")
        return a is not None and a == b

    def gain(self, metric: str) -> float | None:
        """metric(KD on) − metric(KD off) of the trials' reported (mean-over-repeats) metrics."""
        on, off = metric_of(self.on.get("metrics"), metric), metric_of(self.off.get("metrics"), metric)
        return None if on is None or off is None else on - off

    def repeat_gains(self, metric: str) -> list[float] | None:
        """The gain repeat by repeat (repeat r of the KD trial against repeat r of its twin: the same streams),
        or None when either side kept no per-repeat metrics."""
        on = (self.on.get("metrics") or {}).get("repeats")
        off = (self.off.get("metrics") or {}).get("repeats")
        if not isinstance(on, list) or not isinstance(off, list) or len(on) != len(off) or not on:
            return None
        gains = []
        for a, b in zip(on, off):
            x, y = metric_of(a, metric), metric_of(b, metric)
            if x is None or y is None:
                return None
            gains.append(x - y)
        return gains


@dataclass(frozen=True)
class LostPair:
    """An original whose twin never completed: which side failed and why."""

    original: int
    twin: int | None
    failed_side: str | None  # "kd_on" | "kd_off" (the twin's side), None when the pair was refused as mismatched
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original, "twin": self.twin, "failed_side": self.failed_side, "reason": self.reason}


@dataclass(frozen=True)
class Pairing:
    pairs: list[Pair]
    lost: list[LostPair]  # a twin FAILED for good
    refused: list[LostPair]  # linked trials that differ beyond distill.kd (failed_side None): no pair
    pending: list[int]  # originals whose twin is still WAITING or RUNNING
    unpaired: list[int]  # COMPLETE trials in no pair (and not an original with a pending/lost twin)


def _settings_diff(a: Mapping, b: Mapping, kd_param: str) -> list[str]:
    """Dotted paths where two trials' settings differ, beyond ``kd_param`` and the ignored settings."""
    ignored_blocks, ignored_fields = IGNORED_SETTINGS

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, Mapping):
            return {prefix: _freeze(node)}
        out: dict[str, Any] = {}
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            top, _, rest = path.partition(".")
            if top in ignored_blocks or rest in ignored_fields.get(top, ()):
                continue
            out.update(flat(v, path))
        return out

    fa, fb = flat(a or {}), flat(b or {})
    for path, default in LATER_DEFAULTS.items():
        fa.setdefault(path, _freeze(default))
        fb.setdefault(path, _freeze(default))
    return sorted(k for k in set(fa) | set(fb) if k != kd_param and fa.get(k) != fb.get(k))


def _mismatch(original: Mapping, twin: Mapping, kd_param: str) -> str | None:
    """Why two linked trials are not a KD pair (None when they are)."""
    fo, ft = kd_flag(original, kd_param), kd_flag(twin, kd_param)
    if fo is None or ft is None or fo == ft:
        return f"{kd_param} is not flipped between the two trials"
    if (original.get("replicate") or 0) != (twin.get("replicate") or 0):
        return "the two trials are different design replicates (different random streams)"
    # the KD method is KD's own setting: only the KD-on side has (or uses) one
    po = {k: _freeze(v) for k, v in (original.get("params") or {}).items() if k != kd_param and not kd_treatment(k)}
    pt = {k: _freeze(v) for k, v in (twin.get("params") or {}).items() if k != kd_param and not kd_treatment(k)}
    diff = sorted(k for k in set(po) | set(pt) if po.get(k) != pt.get(k))
    if not diff and original.get("settings") and twin.get("settings"):
        diff = [k for k in _settings_diff(original["settings"], twin["settings"], kd_param) if not kd_treatment(k)]
    return f"settings differ beyond {kd_param}: {', '.join(diff)}" if diff else None


def _make_pair(a: Mapping, b: Mapping, kd_param: str, linked: bool) -> Pair:
    on, off = (a, b) if kd_flag(a, kd_param) else (b, a)
    params = {k: v for k, v in (a.get("params") or {}).items() if k != kd_param and not kd_treatment(k)}
    seed = _nested_get(a.get("settings") or {}, "train.seed")
    return Pair(dict(on), dict(off), params, seed, linked)


def pair_trials(trials: Iterable[Mapping], *, kd_param: str = KD_PARAM) -> Pairing:
    """Pair KD twins by their ``twin_of`` link (checked), then unlinked COMPLETE trials by params and seed. In a
    study that searched ``distill.method`` (a trial carries it), sibling sets are paired instead
    (:func:`_pair_siblings`)."""
    trials = [t for t in trials if isinstance(t, Mapping) and isinstance(t.get("number"), (int, np.integer))]
    by_number = {int(t["number"]): t for t in trials}
    if any(METHOD_PARAM in (t.get("params") or {}) or METHOD_PARAM in (t.get("queued_params") or {})
           for t in trials):
        return _pair_siblings(trials, by_number, kd_param)
    twins: dict[int, list[Mapping]] = {}
    for t in trials:
        link = t.get("twin_of")
        if isinstance(link, (int, np.integer)) and int(link) in by_number:
            twins.setdefault(int(link), []).append(t)

    pairs: list[Pair] = []
    lost: list[LostPair] = []
    refused: list[LostPair] = []
    pending: list[int] = []
    used: set[int] = set()
    for number in sorted(twins):
        original = by_number[number]
        if number in used or not is_state(original, "COMPLETE") or kd_flag(original, kd_param) is None:
            continue  # (an original already paired as someone's twin: a chain of links pairs each trial once)
        members = sorted((t for t in twins[number] if int(t["number"]) not in used), key=lambda t: int(t["number"]))
        done = [t for t in members if is_state(t, "COMPLETE")]
        if done:
            twin = done[0]
            reason = _mismatch(original, twin, kd_param)
            used |= {number, int(twin["number"])}
            if reason is None:
                pairs.append(_make_pair(original, twin, kd_param, linked=True))
            else:
                refused.append(LostPair(number, int(twin["number"]), None, reason))
        elif any(is_state(t, "WAITING") or is_state(t, "RUNNING") for t in members):
            pending.append(number)
            used.add(number)
        else:
            failed = [t for t in members if is_state(t, "FAIL")]
            if failed:
                twin = failed[-1]
                # The twin's side is the opposite of its original's (whose flag is known): a twin that failed
                # before it sampled anything has no params or settings to read it from.
                side = "kd_off" if kd_flag(original, kd_param) else "kd_on"
                why = twin.get("fail_reason") or "failed"
                tries = f" (after {len(failed)} attempts)" if len(failed) > 1 else ""
                lost.append(LostPair(number, int(twin["number"]), side, f"{why}{tries}"))
                used.add(number)

    # Unlinked COMPLETE trials: matched by searched params and seed (lowest trial numbers first).
    groups: dict[Any, dict[bool, list[Mapping]]] = {}
    for t in sorted(trials, key=lambda t: int(t["number"])):
        if int(t["number"]) in used or not is_state(t, "COMPLETE"):
            continue
        flag = kd_flag(t, kd_param)
        if flag is None:
            continue
        params = {k: v for k, v in (t.get("params") or {}).items() if k != kd_param and not kd_treatment(k)}
        key = (_freeze(params), _freeze(_nested_get(t.get("settings") or {}, "train.seed")), t.get("replicate") or 0)
        groups.setdefault(key, {True: [], False: []})[flag].append(t)
    for sides in groups.values():
        for a, b in zip(sides[True], sides[False]):
            if _mismatch(a, b, kd_param) is None:
                pairs.append(_make_pair(a, b, kd_param, linked=False))
                used |= {int(a["number"]), int(b["number"])}

    pairs.sort(key=lambda p: min(p.numbers))
    lost.sort(key=lambda lp: lp.original)
    unpaired = sorted(int(t["number"]) for t in trials if is_state(t, "COMPLETE") and int(t["number"]) not in used)
    return Pairing(pairs, lost, refused, sorted(pending), unpaired)


def _run_params(t: Mapping) -> dict:
    """What a trial runs: its params, or, before it sampled them, the params it was queued with."""
    return dict(t.get("params") or t.get("queued_params") or {})


def _config_key(t: Mapping, kd_param: str) -> Any:
    """A sibling set's key: the searched params without KD and its method, the seed and the design replicate."""
    params = {k: v for k, v in _run_params(t).items() if k != kd_param and not kd_treatment(k)}
    return (_freeze(params), _freeze(_nested_get(t.get("settings") or {}, "train.seed")), t.get("replicate") or 0)


def _side(t: Mapping, kd_param: str) -> tuple[bool, str | None] | None:
    """(KD on?, method) of what ``t`` runs, or None when unknown."""
    params = _run_params(t)
    flag = _as_bool(params.get(kd_param)) if kd_param in params else None
    return None if flag is None else (flag, params.get(METHOD_PARAM) if flag else None)


def _pair_siblings(trials: list[Mapping], by_number: dict[int, Mapping], kd_param: str) -> Pairing:
    """Pairs of a study that searched ``distill.method``: each configuration (params without ``distill.*`` KD
    flag and method, seed, replicate) has one KD-off trial and one KD-on trial per method, its **sibling set**;
    each KD-on trial pairs with the set's KD-off trial (so the methods' pairs share their KD-off partner).

    A trial is placed by what it runs (params, or the params it was queued with); the seed is read from its
    settings, which a trial that never started has not written: such a trial joins the set of the trial it was
    queued for (``twin_of``). A set with a member still WAITING or RUNNING is pending; a side that only FAILED is a
    lost pair (its ``original``: the set's first COMPLETE trial)."""
    sets: dict[Any, list[Mapping]] = {}
    for t in sorted(trials, key=lambda t: int(t["number"])):
        if _side(t, kd_param) is None:
            continue
        source = t
        link = t.get("twin_of")
        if not t.get("settings") and isinstance(link, (int, np.integer)) and int(link) in by_number:
            source = {**by_number[int(link)], "params": _run_params(t)}  # the seed and replicate of its set
        sets.setdefault(_config_key(source, kd_param), []).append(t)

    pairs: list[Pair] = []
    lost: list[LostPair] = []
    refused: list[LostPair] = []
    pending: list[int] = []
    used: set[int] = set()
    for members in sets.values():
        complete = [t for t in members if is_state(t, "COMPLETE")]
        if not complete:
            continue
        original = int(complete[0]["number"])
        first: dict[tuple[bool, str | None], Mapping] = {}
        for t in complete:
            first.setdefault(_side(t, kd_param), t)
        off = first.get((False, None))
        for (flag, method), on in sorted(first.items(), key=lambda kv: str(kv[0])):
            if not flag or off is None:
                continue
            reason = _mismatch(on, off, kd_param)
            if reason is None:
                linked = on.get("twin_of") == off["number"] or off.get("twin_of") == on["number"] or \
                    on.get("twin_of") == off.get("twin_of") is not None
                params = {k: v for k, v in _run_params(on).items() if k != kd_param and not kd_treatment(k)}
                pairs.append(Pair(dict(on), dict(off), params, _nested_get(on.get("settings") or {}, "train.seed"),
                                  bool(linked), method))
                used |= {int(on["number"]), int(off["number"])}
            else:
                refused.append(LostPair(int(on["number"]), int(off["number"]), None, reason))
        if any(is_state(t, "WAITING") or is_state(t, "RUNNING") for t in members):
            pending.append(original)
            used.add(original)
            continue
        for side in {_side(t, kd_param) for t in members if is_state(t, "FAIL")} - set(first):
            failed = [t for t in members if is_state(t, "FAIL") and _side(t, kd_param) == side]
            why = failed[-1].get("fail_reason") or "failed"
            tries = f" (after {len(failed)} attempts)" if len(failed) > 1 else ""
            label = "kd_on" if side[0] else "kd_off"
            lost.append(LostPair(original, int(failed[-1]["number"]), label,
                                 f"{why}{tries}" + (f" (method {side[1]})" if side[1] else "")))
            used.add(original)

    pairs.sort(key=lambda p: (min(p.numbers), p.method or ""))
    lost.sort(key=lambda lp: (lp.original, lp.twin or -1))
    unpaired = sorted(int(t["number"]) for t in trials if is_state(t, "COMPLETE") and int(t["number"]) not in used)
    return Pairing(pairs, lost, refused, sorted(set(pending)), unpaired)
