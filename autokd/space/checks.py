"""Stage two of validation: small named cross-field checks, each returning (dotted path, message) pairs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


from autokd.errors import hint

from autokd.space.design import check_design
from autokd.space.memory import KNOWN_DATASETS, MemoryLimit, estimate_memory, format_bytes, memory_limit
from autokd.space.dimensions import CONDITIONS, _fmt, dimensions, walk_fields
from autokd.space.schema import Choices, Range, Space


CheckResult = list[tuple[str, str]]

# Allowed values of every candidate value of a field: (low, high, low_inclusive, high_inclusive).
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "model.width_mult": (0.0, 8.0, False, True),
    "model.depth_mult": (0.0, 8.0, False, True),
    "model.kernel_size": (1, 11, True, True),
    "model.expand_ratio": (1, 12, True, True),
    "model.dropout": (0.0, 1.0, True, False),
    "distill.temperature": (0.1, 100.0, True, True),  # beyond these the soft targets under/overflow
    "distill.alpha": (0.0, 1.0, True, True),
    "distill.dist.beta": (0.0, 1e9, True, True),
    "distill.dist.gamma": (0.0, 1e9, True, True),
    "distill.dist.tau": (0.1, 100.0, True, True),
    "distill.logit_std.temperature": (0.1, 100.0, True, True),
    "distill.at.beta": (0.0, 1e9, True, True),
    "distill.fitnets.weight": (0.0, 1e9, True, True),
    "distill.pkt.weight": (0.0, 1e9, True, True),
    "train.lr": (0.0, 10.0, False, True),
    "train.weight_decay": (0.0, 1.0, True, True),
    "train.label_smoothing": (0.0, 1.0, True, False),
    "compress.prune_ratio": (0.0, 1.0, True, False),
}
QUANT_BITS = (2, 3, 4, 5, 6, 7, 8, 32)


RANGE_VALUES_CAP = 10_000  # an int range with more values is checked at its ends only


def _candidates(value: Any) -> list[Any]:
    """Every value a field can take: its choices, every value of an int range (its ends for a float range or a
    huge int range), or the fixed value."""
    if isinstance(value, Choices):
        return list(value.choices)
    if isinstance(value, Range):
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (value.low, value.high))
        step = value.step if value.step and not value.log else 1
        if ints and isinstance(step, int) and step > 0 and 0 <= (value.high - value.low) // step < RANGE_VALUES_CAP:
            return list(range(value.low, value.high + 1, step))
        return [value.low, value.high]
    return [value]


def _discrete_problems(path: str, value: Any, valid: Any, what: str, options: str) -> CheckResult:
    """One line per bad choice, or one line for a range that can produce bad values (naming a few of them)."""
    bad = [v for v in _candidates(value) if not valid(v)]
    if not bad:
        return []
    if isinstance(value, Range):
        shown = ", ".join(map(str, bad[:4])) + (", ..." if len(bad) > 4 else "")
        return [(path, f"the range {value.low}..{value.high} can produce {shown} (valid: {options}); use "
                       "{choices: [...]} of valid values")]
    return [(path, f"{v} {what} (valid: {options})") for v in bad]


def check_ranges(space: Space) -> CheckResult:
    """low < high, non-empty and distinct choices, valid steps and log ranges."""
    out: CheckResult = []
    for path, value in walk_fields(space):
        if isinstance(value, Choices):
            if not value.choices:
                out.append((f"{path}.choices", "choices must not be empty"))
            elif len(set(map(repr, value.choices))) != len(value.choices):
                out.append((f"{path}.choices", "choices must be distinct"))
        elif isinstance(value, Range):
            bad = [k for k in ("low", "high", "step") if getattr(value, k) is not None
                   and not math.isfinite(getattr(value, k))]
            if bad:
                out.append((f"{path}.{bad[0]}", f"{bad[0]} must be a finite number"))
                continue
            if not value.low < value.high:
                out.append((f"{path}.low", f"low must be < high (got low={value.low}, high={value.high})"))
            if value.log and value.low <= 0:
                out.append((f"{path}.low", "a log range needs low > 0"))
            if value.step is not None:
                if value.step <= 0:
                    out.append((f"{path}.step", "step must be > 0"))
                elif value.log:
                    out.append((f"{path}.step", "step and log cannot be used together"))
                elif value.low < value.high and value.step > value.high - value.low:
                    out.append((f"{path}.step", "step is larger than high - low"))
                elif value.low < value.high and (value.high - value.low) / value.step > 1e6:
                    out.append((f"{path}.step", "step is so small that the range has over a million values; "
                                                "leave it out for a continuous range"))
    return out


def check_bounds(space: Space) -> CheckResult:
    """Every candidate value of a field lies in the field's valid interval (alpha in [0, 1], T > 0, ...)."""
    out: CheckResult = []
    values = dict(walk_fields(space))
    for path, (lo, hi, lo_in, hi_in) in BOUNDS.items():
        value = values[path]  # an interval: a range is inside it when both of its ends are
        for v in [value.low, value.high] if isinstance(value, Range) else _candidates(value):
            ok = (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
            if not ok:
                interval = f"{'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
                out.append((path, f"{v} is out of range (valid: {interval})"))
    out += _discrete_problems("compress.bits", values["compress.bits"], lambda v: v in QUANT_BITS,
                              "is not a supported bit width", "2-8, or 32 for none")
    out += _discrete_problems("model.kernel_size", values["model.kernel_size"],
                              lambda v: not isinstance(v, int) or v % 2 == 1, "must be odd", "1, 3, 5, 7, ...")
    return out


def check_families(space: Space) -> CheckResult:
    """Model and teacher families exist in the registry, and searched fields are used by the family."""
    from autokd.models.registry import family_fields, student_families, teacher_families

    out: CheckResult = []
    students, teachers = student_families(), teacher_families()
    if space.model.family not in students:
        out.append(("model.family", f"unknown family {space.model.family!r}{hint(space.model.family, students)}"))
    else:
        used = family_fields(space.model.family)
        for d in dimensions(space):
            name = d.path.removeprefix("model.")
            if d.path.startswith("model.") and name not in used:
                out.append((d.path, f"family {space.model.family} does not use this field"))
    if space.distill.teacher.family not in teachers:
        t = space.distill.teacher.family
        out.append(("distill.teacher.family", f"unknown teacher family {t!r}{hint(t, teachers)}"))
    return out


def check_dataset(space: Space) -> CheckResult:
    """imagefolder needs a root; the split leaves room for training data."""
    d = space.dataset
    out: CheckResult = []
    if d.name == "imagefolder" and not d.root:
        out.append(("dataset.root", "imagefolder needs root: a folder with one sub-folder per class"))
    if d.name in ("digits", "imagefolder") and d.val_fraction + d.test_fraction >= 0.9:
        out.append(("dataset.val_fraction", "val_fraction + test_fraction must leave at least 10% for training"))
    return out


def check_teacher(space: Space) -> CheckResult:
    """A checkpoint is one teacher."""
    t = space.distill.teacher
    if t.checkpoint and t.ensemble > 1:
        return [("distill.teacher.ensemble", "a checkpoint teacher cannot be an ensemble (set ensemble: 1)")]
    return []


def check_search(space: Space) -> CheckResult:
    """Objectives are distinct; KD twins need distill.kd to be searched."""
    out: CheckResult = []
    objs = space.search.objectives
    if len(set(objs)) != len(objs):
        out.append(("search.objectives", "objectives must be distinct"))
    kd = space.distill.kd
    if space.search.kd_twins and not (isinstance(kd, Choices) and set(kd.choices) == {True, False}):
        out.append(("search.kd_twins", "twins flip distill.kd, so distill.kd must be {choices: [true, false]}"))
    return out


def check_distill(space: Space) -> CheckResult:
    """A searched field that applies only at some values of another (a KD method only with KD on, a method's
    settings only with that method) can apply in some trial: every link of its condition chain can hold."""
    out: CheckResult = []
    values = dict(walk_fields(space))

    def broken(path: str) -> tuple[str, tuple[Any, ...]] | None:  # the first link of the chain that cannot hold
        if path not in CONDITIONS:
            return None
        other, allowed = CONDITIONS[path]
        if not any(v == a and type(v) is type(a) for v in _candidates(values[other]) for a in allowed):
            return other, allowed
        return broken(other)

    for d in dimensions(space):
        link = broken(d.path)
        if link is None:
            continue
        other, allowed = link
        shown = ", ".join(_fmt(a) for a in allowed)
        now = (f"{{choices: [{', '.join(_fmt(v) for v in _candidates(values[other]))}]}}"
               if isinstance(values[other], Choices) else _fmt(values[other]))
        via = "" if other == CONDITIONS[d.path][0] else f" (it applies only with {CONDITIONS[d.path][0]} = " \
            f"{', '.join(_fmt(a) for a in CONDITIONS[d.path][1])}, which needs {other} = {shown})"
        fix = ("it applies only with KD on (set distill.kd to true or to {choices: [true, false]})"
               if other == "distill.kd" else
               f"it applies only with {other} = {shown} (set {other} to {shown} or search it over {shown})")
        out.append((d.path, f"is searched, but {other} is {now}: {fix}{via}"))
    return out


def _arch_candidates(space: Space, cap: int = 32) -> list[dict[str, Any]]:
    """Architectures of the space that can differ in their feature resolutions: every combination of the model's
    categorical choices (numeric ranges at their low end), at most ``cap``."""
    base = space.model.model_dump(mode="python")
    fields = [(k, _candidates(getattr(space.model, k))) for k in base]
    combos: list[dict[str, Any]] = [{}]
    for name, options in fields:
        value = getattr(space.model, name)
        options = options if isinstance(value, Choices) else options[:1]
        combos = [{**c, name: o} for c in combos for o in options][:cap]
    return combos


def check_feature_layers(space: Space) -> CheckResult:
    """Every searched architecture has the stage ends a feature method hints (matched by resolution with the
    teacher's), and the feature member is a member of the teacher ensemble."""
    from autokd.distill.features import FEATURE_METHODS, feature_pairs
    from autokd.models import build_model, build_teacher

    values = dict(walk_fields(space))
    kd_can = True in _candidates(values["distill.kd"])
    methods = [m for m in _candidates(values["distill.method"]) if m in FEATURE_METHODS] if kd_can else []
    if not methods:
        return []
    out: CheckResult = []
    if space.distill.feature_member >= space.distill.teacher.ensemble:
        out.append(("distill.feature_member", f"{space.distill.feature_member} is not a member of the teacher "
                    f"ensemble (valid: 0-{space.distill.teacher.ensemble - 1})"))
    est = estimate_memory(space)
    staged = [m for m in methods if FEATURE_METHODS[m].stages]
    if est is None or not staged:  # an image folder not there yet: its image size is not known
        return out
    shape = est.image_shape
    try:
        teacher = build_teacher(space.distill.teacher, num_classes=10, in_channels=shape[0])
    except Exception:  # an unknown teacher family is check_families' line
        return out
    seen: set[tuple[str, str]] = set()
    for arch in _arch_candidates(space):
        family = arch.pop("family")
        try:
            student = build_model(family, num_classes=10, in_channels=shape[0], **arch)
        except Exception:  # an unknown family or a bad value is another check's line
            continue
        for m in staged:
            for layers in _candidates(values[f"distill.{m}.layers"]):
                try:
                    feature_pairs(m, student, teacher, shape, layers)
                except ValueError as exc:
                    where = ", ".join(f"{k} {_fmt(v)}" for k, v in arch.items()
                                      if isinstance(getattr(space.model, k), Choices))
                    line = (f"distill.{m}.layers", f"{_fmt(layers)}: {exc} ({family}"
                            + (f" with {where}" if where else "") + f", {shape[1]}x{shape[2]} images)")
                    if (line[0], str(exc)) not in seen:
                        seen.add((line[0], str(exc)))
                        out.append(line)
    return out


def check_compress(space: Space) -> CheckResult:
    """Searching compression needs a fine-tune phase to recover in."""
    c = space.compress
    if c.finetune_epochs == 0 and (any(v for v in _candidates(c.prune_ratio)) or
                                   any(v != 32 for v in _candidates(c.bits))):
        return [("compress.finetune_epochs", "pruning and quantization need finetune_epochs >= 1")]
    return []


NNI_INSTALL = 'pip install "autokd[nni]"'


#: What ``autokd.compress.prune`` imports for the ``nni-*`` methods (the pruners; the evaluator of ``nni-taylor``).
NNI_MODULES = ("nni.compression.pruning", "nni.compression.utils")


def nni_problem() -> str | None:
    """Why the NNI backend cannot be used on this machine, or ``None`` when it can.

    NNI is imported, not only looked up: NNI 3.0 (its last release) pins old ``filelock`` / ``typeguard`` versions,
    so an install whose dependencies were upgraded since exists but may fail to import, and would then fail every
    trial at prune time. The import takes seconds (torch included), so call this only when an ``nni-*`` method is
    used. Any exception from the import counts (a broken dependency need not raise ``ImportError``)."""
    import importlib
    import importlib.util

    try:
        installed = importlib.util.find_spec("nni") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return f"NNI is not installed: {NNI_INSTALL}"
    for name in NNI_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - whatever a broken install raises, it is this one line
            detail = " ".join(str(exc).split())  # one line, however long the exception's message
            return (f"nni is installed but does not import: {type(exc).__name__}: {detail} (importing {name}; "
                    f"NNI 3.0 needs filelock<3.12 and typeguard<4.1.3, `pip check` lists conflicts)")
    return None


def nni_available() -> bool:
    """Whether NNI's pruning backend imports (see :func:`nni_problem`)."""
    return nni_problem() is None


def check_backends(space: Space) -> CheckResult:
    """An ``nni-*`` pruning method needs the optional NNI backend installed (``pip install "autokd[nni]"``) and
    importable; nothing is imported when no ``nni-*`` method is used."""
    method = space.compress.prune_method
    if not str(method).startswith("nni-"):
        return []
    problem = nni_problem()
    return [("compress.prune_method", f"{method} needs NNI: {problem}")] if problem else []


def check_memory(space: Space, *, limit: MemoryLimit | None = None) -> CheckResult:
    """The data fits in memory: the steady-state estimate of :func:`~autokd.space.memory.estimate_memory` is at
    most ``limit`` (default: :func:`~autokd.space.memory.memory_limit`, 80% of the available memory or
    ``$AUTOKD_MEMORY_LIMIT_BYTES``). One line, at the field to change: ``train.augment_views`` when the data
    without the view pool would fit, else ``dataset.image_size`` (``dataset.limit`` when no size is set)."""
    limit = limit if limit is not None else memory_limit()
    if limit is None:
        return []
    est = estimate_memory(space)
    if est is None or est.total <= limit.bytes:
        return []
    d, parts = space.dataset, est.parts
    c, s, _ = est.image_shape
    native = KNOWN_DATASETS[d.name].side if d.name in KNOWN_DATASETS else None
    upsampled = bool(d.image_size and native and d.image_size > native)
    smaller = (f"lower dataset.image_size ({d.name} is {native} px)" if upsampled
               else "lower dataset.image_size" if d.image_size else f"set dataset.image_size below {s}")
    views = space.train.augment_views
    fewer_views = "lower train.augment_views" if views > 1 else "set train.augment: false"
    fewer_images = "lower dataset.limit" if d.limit else "set dataset.limit"
    if not upsampled and parts["view pool"] and parts["images"] + parts["teacher logits"] <= limit.bytes:
        path, remedies = "train.augment_views", [fewer_views, fewer_images, smaller]
    else:
        path = "dataset.image_size" if d.image_size is not None else "dataset.limit"
        remedies = [smaller, fewer_images] + ([fewer_views] if parts["view pool"] else [])
    shown = ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items() if n)
    pool = f" in {views} view{'s' if views > 1 else ''}" if parts["view pool"] else ""
    need = ("at least " if est.lower_bound else "") + f"~{format_bytes(est.total)}"
    return [(path, f"the data would need {need} in memory ({shown}: {sum(est.splits.values()):,} float32 images "
                   f"of {c}×{s}×{s}, {est.splits['train']:,} of them for training{pool}), more than {limit.text}: "
                   f"{', '.join(remedies[:-1])}, or {remedies[-1]}")]


CHECKS: list[Callable[[Space], CheckResult]] = [check_ranges, check_bounds, check_families, check_dataset,
                                                check_teacher, check_distill, check_feature_layers, check_search,
                                                check_compress, check_design]
#: Checks that depend on the machine, not only on the space: run on space files (``load_space``, ``autokd
#: validate``, ``autokd search``), not on a space stored in a study (that one must stay readable elsewhere).
MACHINE_CHECKS: list[Callable[[Space], CheckResult]] = [check_memory, check_backends]


def kd_twins_enabled(space: Space) -> bool:
    """``search.kd_twins``, defaulting to true when distill.kd is searched over both values."""
    if space.search.kd_twins is not None:
        return space.search.kd_twins
    kd = space.distill.kd
    return isinstance(kd, Choices) and set(kd.choices) == {True, False}



def early_stop_enabled(space: Space) -> bool:
    """``search.early_stop``, defaulting to true only when distill.kd is not searched: stopping a trial early
    conditions its KD twin on the trial's survival, which biases the measured KD gain."""
    if space.search.early_stop is not None:
        return space.search.early_stop
    return not isinstance(space.distill.kd, Choices)
