"""The search space: a pydantic v2 schema, a YAML loader that keeps line numbers, ``--set`` overrides,
and small named cross-field checks.

Validation runs in two stages (as Ludwig does): the schema (types, ``extra="forbid"``, ``version: 1``),
then :data:`CHECKS`, small functions that each look at one cross-field rule. Every problem from both stages is
collected and raised at once as a :class:`~autokd.errors.SpaceError` whose lines read
``SPACE.yaml:LINE: dotted.path: what is wrong (valid: ...)``.

A field that can be searched takes a fixed value, ``{choices: [...]}`` or ``{low:, high:, step:?, log:?}``.
The Optuna parameter name of a searched field is its dotted path (``model.width_mult``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, model_validator

from autokd.errors import Problem, SpaceError, hint

T = TypeVar("T")
N = TypeVar("N", int, float)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choices(_Strict, Generic[T]):
    """A categorical dimension: ``{choices: [a, b, c]}``."""

    choices: list[T]


class Range(_Strict, Generic[N]):
    """A numeric dimension: ``{low:, high:, step:?, log:?}`` (bounds inclusive)."""

    low: N
    high: N
    step: N | None = None
    log: bool = False


def _kind(value: Any) -> str:
    if isinstance(value, Choices):
        return "<choices>"
    if isinstance(value, Range):
        return "<range>"
    if isinstance(value, dict):
        return "<range>" if ("low" in value or "high" in value) else "<choices>"
    return "<fixed>"


class NotARange(BaseModel):
    """What a ``{low:, high:}`` on a categorical field validates against: always one clear error."""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, value: Any) -> Any:
        raise ValueError("this field takes a fixed value or {choices: [...]}, not a range")


# Tags start with "<" so that error locations can drop them (see _clean_loc).
def _searchable(base: Any, *, numeric: bool) -> Any:
    members: list[Any] = [Annotated[base, Tag("<fixed>")], Annotated[Choices[base], Tag("<choices>")],
                          Annotated[Range[base] if numeric else NotARange, Tag("<range>")]]
    return Annotated[Union[tuple(members)], Discriminator(_kind)]


SFloat = _searchable(float, numeric=True)
SInt = _searchable(int, numeric=True)
SBool = _searchable(bool, numeric=False)

Conv = Literal["depthwise", "standard"]
DatasetName = Literal["digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "imagefolder"]


class DatasetSpec(_Strict):
    """Which data, how it is split, at what image size."""

    name: DatasetName = "digits"
    root: str | None = Field(None, description="Folder holding (or receiving) the dataset files.")
    download: bool = Field(False, description="Allow torchvision to download the dataset into root.")
    image_size: int | None = Field(None, ge=4, le=1024, description="Resize images to this side (default: native).")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used where the dataset has no official test split.")
    split_seed: int = 0
    limit: int | None = Field(None, ge=10, description="Use at most this many training images (stratified).")


class ModelSpec(_Strict):
    """The student architecture: a family from the registry and its NAS choices."""

    family: str = "mobilenetv2"
    width_mult: SFloat = 1.0
    depth_mult: SFloat = 1.0
    kernel_size: SInt = 3
    expand_ratio: SInt = 6
    conv: _searchable(Conv, numeric=False) = "depthwise"
    dropout: SFloat = 0.0
    stages: Literal["small", "cifar"] = Field("small", description="Stage table of the family: 'small' (8-16 px "
                                              "images) or 'cifar' (32 px).")


class TeacherSpec(_Strict):
    """The KD teacher: trained once and cached, or loaded from a checkpoint."""

    family: str = "resnet"
    width: int = Field(32, ge=4, description="Channels of the first stage.")
    depth: int = Field(1, ge=1, le=16, description="Residual blocks per stage.")
    epochs: int = Field(15, ge=1)
    lr: float = Field(0.05, gt=0)
    checkpoint: str | None = Field(None, description="A state_dict (.pt) of this architecture to load instead of training.")
    ensemble: int = Field(1, ge=1, le=16, description="Teachers trained with different seeds; KD uses their mean logits.")
    augment: Literal["auto", False] = Field(
        "auto", description="'auto': when any trial can augment, the teacher trains on the students' view pool "
        "(one view per image per epoch) before labelling it; false: clean images only (its soft targets over "
        "the views are then often wrong).")


class DistillSpec(_Strict):
    """Hinton's knowledge distillation: alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE."""

    kd: SBool = False
    temperature: SFloat = 4.0
    alpha: SFloat = 0.9
    teacher: TeacherSpec = TeacherSpec()


class TrainSpec(_Strict):
    """The one training loop's settings; the same for every trial (except what is searched)."""

    epochs: int = Field(10, ge=1, description="Training epochs of every trial.")
    batch_size: int = Field(64, ge=2, description="Images per step (at least 2: BatchNorm needs two samples).")
    optimizer: _searchable(Literal["sgd", "adamw"], numeric=False) = "sgd"
    lr: SFloat = 0.05
    weight_decay: SFloat = 5e-4
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov when > 0; 0 trains plain SGD).")
    schedule: Literal["cosine", "onecycle"] = "cosine"
    label_smoothing: SFloat = 0.0
    augment: SBool = Field(False, description="Random shifts (and flips/crops on natural images) from a view pool.")
    augment_views: int = Field(4, ge=1, le=64, description="Augmented views per training image, drawn once "
                               "from the seed; the teacher's logits over them are cached.")
    grad_clip: float | None = Field(5.0, gt=0, description="Clip the gradient norm (keeps low-bit QAT stable).")
    seed: int = Field(0, description="Initialization, data order and augmentation of every trial.")
    repeats: int = Field(1, ge=1, le=32, description="Train every configuration this many times, each repeat "
                         "with its own random streams derived from (seed, repeat, phase); the trial reports the "
                         "mean and keeps each repeat's metrics.")


PruneMethod = Literal["l1", "l2", "random", "taylor", "bn_scale"]


class CompressSpec(_Strict):
    """Structured pruning and quantization-aware training, run after dense training as a fine-tune phase.

    Every configuration trains ``train.epochs + finetune_epochs`` epochs in all, pruned/quantized or not.
    """

    prune_ratio: SFloat = Field(0.0, description="Share of channels removed per layer (0 = no pruning).")
    prune_method: PruneMethod = "l1"
    round_to: int = Field(1, ge=1, description="Round pruned channel counts to a multiple of this.")
    bits: SInt = Field(32, description="Weight bits (2-8), or 32 for no quantization.")
    act_bits: int | None = Field(None, ge=2, le=8, description="Activation bits of quantized layers "
                                 "[default: bits, but at least 4: min/max-ranged 2-3 bit activations collapse].")
    keep_first_last: bool = Field(True, description="Keep the first conv and the classifier at 8 bits.")
    finetune_epochs: int = Field(2, ge=0, description="Epochs after pruning/quantization (run by every trial).")
    finetune_lr: float | None = Field(None, gt=0, le=10,
                                      description="Fine-tune learning rate [default: train.lr / 2].")


Objective = Literal["flops", "bitops", "size", "params"]


class SearchSpec(_Strict):
    """How Optuna searches: sampler, budget, seeds, objectives."""

    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    n_trials: int = Field(20, ge=1, description="Number of COMPLETE trials the study should reach.")
    seed: int = 0
    objectives: list[Objective] = Field(["flops"], min_length=1, max_length=2,
                                        description="Cost objectives minimized beside validation accuracy.")
    startup_trials: int = Field(6, ge=0, description="Random trials before TPE models the space.")
    population_size: int = Field(8, ge=2, description="NSGA-II population size.")
    max_failures: int = Field(5, ge=1, description="Stop after this many FAIL trials in one run.")
    kd_twins: bool | None = Field(None, description="Run every trial's twin with distill.kd flipped "
                                  "[default: true when distill.kd is searched].")


class Space(_Strict):
    """A whole search space file."""

    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100)
    dataset: DatasetSpec = DatasetSpec()
    model: ModelSpec = ModelSpec()
    distill: DistillSpec = DistillSpec()
    train: TrainSpec = TrainSpec()
    compress: CompressSpec = CompressSpec()
    search: SearchSpec = SearchSpec()

    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The file the space was read from (``None`` when built from a dict)."""
        return self._source


# Fields that set the budget, not the question: left out of the space hash so that a study can be
# resumed or extended with more trials.
BUDGET_FIELDS = {"search": {"n_trials", "max_failures"}}


# --------------------------------------------------------------------------------------------
# Dimensions


@dataclass(frozen=True)
class Dimension:
    """One searched field: its Optuna name (dotted path) and its distribution."""

    path: str
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    is_int: bool = False

    @property
    def size(self) -> int | None:
        """Number of distinct values, or ``None`` for a continuous dimension."""
        if self.choices is not None:
            return len(self.choices)
        if self.is_int:
            return int((self.high - self.low) // (self.step or 1)) + 1
        if self.step:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(_fmt(c) for c in self.choices) + "}"
        kind = "int" if self.is_int else "float"
        extra = (f", step {_fmt(self.step)}" if self.step else "") + (", log" if self.log else "")
        return f"{kind} [{_fmt(self.low)}, {_fmt(self.high)}]{extra}"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _walk(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, (Choices, Range)):
            yield path, value
        elif isinstance(value, BaseModel):
            yield from _walk(value, path + ".")
        else:
            yield path, value


def dimensions(space: Space) -> list[Dimension]:
    """The searched fields of ``space``, in schema order (dataset, model, distill, train, compress, search)."""
    dims = []
    for path, value in _walk(space):
        if isinstance(value, Choices):
            dims.append(Dimension(path, choices=tuple(value.choices)))
        elif isinstance(value, Range):
            dims.append(Dimension(path, low=value.low, high=value.high, step=value.step, log=value.log,
                                  is_int=isinstance(value.low, int) and isinstance(value.high, int)))
    return dims


def discrete_size(dims: Sequence[Dimension]) -> tuple[int, int]:
    """(number of configurations of the discrete dimensions, number of continuous dimensions)."""
    size, continuous = 1, 0
    for d in dims:
        if d.size is None:
            continuous += 1
        else:
            size *= d.size
    return size, continuous


def resolve(space: Space, params: dict[str, Any]) -> Space:
    """A copy of ``space`` with every searched field set from ``params`` (dotted names).

    Raises :class:`SpaceError` if a searched field has no value or a value names no searched field.
    """
    dims = {d.path for d in dimensions(space)}
    missing = sorted(dims - set(params))
    unknown = sorted(set(params) - dims)
    problems = [Problem("no value given for this searched field", p) for p in missing]
    problems += [Problem("not a searched field of this space" + hint(p, sorted(dims)), p) for p in unknown]
    if problems:
        raise SpaceError(problems)
    data = space.model_dump(mode="python")
    for path, value in params.items():
        _set_path(data, path.split("."), value)
    resolved = Space.model_validate(data)
    resolved._source = space.source
    return resolved


def is_resolved(space: Space) -> bool:
    return not dimensions(space)


def space_hash(space: Space) -> str:
    """A canonical hash of the question a space asks (budget fields left out)."""
    data = space.model_dump(mode="json", exclude=BUDGET_FIELDS)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def to_dict(space: Space) -> dict[str, Any]:
    """Plain JSON-able data of the space (round-trips through :func:`space_from_dict`)."""
    return space.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Cross-field checks (stage two). Each returns (dotted path, message) pairs.

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
    for path, value in _walk(space):
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
    values = dict(_walk(space))
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


def check_compress(space: Space) -> CheckResult:
    """Searching compression needs a fine-tune phase to recover in."""
    c = space.compress
    if c.finetune_epochs == 0 and (any(v for v in _candidates(c.prune_ratio)) or
                                   any(v != 32 for v in _candidates(c.bits))):
        return [("compress.finetune_epochs", "pruning and quantization need finetune_epochs >= 1")]
    return []


CHECKS: list[Callable[[Space], CheckResult]] = [check_ranges, check_bounds, check_families, check_dataset,
                                                check_teacher, check_search, check_compress]


def kd_twins_enabled(space: Space) -> bool:
    """``search.kd_twins``, defaulting to true when distill.kd is searched over both values."""
    if space.search.kd_twins is not None:
        return space.search.kd_twins
    kd = space.distill.kd
    return isinstance(kd, Choices) and set(kd.choices) == {True, False}


# --------------------------------------------------------------------------------------------
# YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-3`` is a float, not a string) and duplicate-key detection."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


# YAML 1.2 booleans: true/false only ("no", "on", "yes", "off" stay strings, as in YAML 1.2).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every path in a composed YAML document to the 1-based line where it is written."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), out)
    return out


def _duplicate_keys(node: yaml.Node, path: tuple = ()) -> Iterator[tuple[tuple, int]]:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                yield path + (key_node.value,), key_node.start_mark.line + 1
            seen.add(key_node.value)
            yield from _duplicate_keys(value_node, path + (key_node.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (i,))


def parse_yaml_value(text: str) -> Any:
    """Parse one ``--set`` value with the same YAML rules (and the same limits) as the space file."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_YAML_DEPTH} levels deep") from None
    if node is not None:
        size, cycle = _node_stats(node)
        if cycle is not None:
            raise ValueError("an alias refers to the node that contains it")
        if size > MAX_YAML_NODES or _depth(node) > MAX_YAML_DEPTH:
            raise ValueError(f"too large or too deeply nested (at most {MAX_YAML_NODES:,} values, "
                             f"{MAX_YAML_DEPTH} levels)")
    return yaml.load(text, Loader=_Loader)


MAX_YAML_NODES = 100_000  # after alias expansion: a space is a few hundred; more is an alias bomb
MAX_YAML_DEPTH = 100  # nesting; PyYAML recurses per level and fails near 450


def _line_of_depth(text: str, limit: int) -> int:
    """The line where bracket or indentation nesting first passes ``limit`` (1 if never)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        for ch in line:
            depth += ch in "[{"
            depth -= ch in "]}"
            if depth > limit:
                return number
    return 1


def _node_stats(node: yaml.Node) -> tuple[int, int | None]:
    """(size after alias expansion, line of a node that contains itself or None); shared nodes are counted once
    per use but walked once (memoised), so an alias bomb is measured without being expanded."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    cycle: list[int] = []

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            cycle.append(n.start_mark.line + 1)
            return 0
        on_path.add(key)
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        on_path.discard(key)
        sizes[key] = min(total, 10 * MAX_YAML_NODES)
        return sizes[key]

    total = size(node)
    return total, (cycle[0] if cycle else None)


def _nodes(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node of a composed document once, in document order (shared alias nodes once; cycles are safe)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n, yaml.MappingNode):
            stack.extend(c for pair in reversed(n.value) for c in reversed(pair))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(reversed(n.value))


def _bad_scalar_line(loader: yaml.SafeLoader, node: yaml.Node) -> int | None:
    """The line of the first node whose value cannot be constructed (a bad ``!!tag``, a huge integer, ...)."""
    for n in _nodes(node):
        try:
            if isinstance(n, yaml.MappingNode):
                if n.tag == "tag:yaml.org,2002:map":
                    loader.construct_mapping(n, deep=False)  # merge keys (<<) fail here
            elif not isinstance(n, yaml.SequenceNode):
                loader.construct_object(n, deep=True)
        except Exception:
            return n.start_mark.line + 1
    return None


def _yaml_problem(exc: Exception, name: str, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):  # ReaderError: a control character
        line = text[:exc.position].count("\n") + 1
    else:
        line = 1
    what = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return Problem(f"YAML syntax error: {what}", file=name, line=line)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    name = str(path)
    if not path.exists():
        raise SpaceError(Problem("no such file", file=name))
    if path.is_dir():
        raise SpaceError(Problem("is a directory, expected a YAML file", file=name))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpaceError(Problem(f"cannot read: {exc.strerror or exc}", file=name)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpaceError(Problem(f"not UTF-8 text (byte {raw[exc.start]:#04x})", file=name, line=line)) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SpaceError(_yaml_problem(exc, name, text)) from None
    except RecursionError:
        raise SpaceError(Problem(f"nested more than {MAX_YAML_DEPTH} levels deep", file=name,
                                 line=_line_of_depth(text, MAX_YAML_DEPTH))) from None
    if node is None:
        raise SpaceError(Problem("the file is empty; a space starts with 'version: 1'", file=name))
    size, cycle = _node_stats(node)
    if cycle is not None:
        raise SpaceError(Problem("an alias refers to the node that contains it", file=name, line=cycle))
    if size > MAX_YAML_NODES:
        raise SpaceError(Problem(f"the document expands to more than {MAX_YAML_NODES:,} values (aliases)",
                                 file=name, line=node.start_mark.line + 1))
    complex_key = _complex_key_line(node)
    if complex_key is not None:
        raise SpaceError(Problem("a key must be a plain name, not a list or mapping", file=name, line=complex_key))
    if _depth(node) > MAX_YAML_DEPTH:
        raise SpaceError(Problem(f"nested more than {MAX_YAML_DEPTH} levels deep", file=name,
                                 line=_line_of_depth(text, MAX_YAML_DEPTH)))
    dups = list(_duplicate_keys(node))
    if dups:
        raise SpaceError([Problem("key given twice", ".".join(map(str, p)), name, line) for p, line in dups])
    try:
        data = yaml.load(text, Loader=_Loader)
    except Exception as exc:  # constructors raise ValueError, KeyError, TypeError, ... for bad tags and keys
        line = _bad_scalar_line(_Loader(text), node) or (getattr(getattr(exc, "problem_mark", None), "line", 0) + 1)
        what = getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"
        raise SpaceError(Problem(f"cannot read this value: {str(what).splitlines()[0][:200]}", file=name,
                                 line=line)) from None
    return data, _line_map(node)


def _complex_key_line(node: yaml.Node) -> int | None:
    """The line of the first mapping key that is itself a list or a mapping (None if there is none)."""
    for n in _nodes(node):
        if isinstance(n, yaml.MappingNode):
            for k, _ in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    return k.start_mark.line + 1
    return None


def _depth(node: yaml.Node, limit: int = MAX_YAML_DEPTH + 1) -> int:
    """Nesting depth of a composed document (stops counting past ``limit``)."""
    best, stack, seen = 0, [(node, 1)], set()
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if best >= limit or id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            stack.extend((c, d + 1) for pair in n.value for c in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((c, d + 1) for c in n.value)
    return best


# --------------------------------------------------------------------------------------------
# Loading


def _set_path(data: dict, keys: list[str], value: Any) -> None:
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any, str]]:
    """``["train.epochs=1", ...]`` -> ``[(path, value, original text), ...]``; values are parsed as YAML."""
    out, problems = [], []
    for text in overrides:
        path, sep, raw = text.partition("=")
        path = path.strip()
        if not sep or not path or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", path):
            problems.append(Problem(f"expected dotted.path=VALUE, e.g. train.epochs=1 (got {text!r})", file="--set"))
            continue
        try:
            value = parse_yaml_value(raw)
        except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            problems.append(Problem(f"value is not valid YAML: {first}", path, "--set"))
            continue
        out.append((path, value, text))
    if problems:
        raise SpaceError(problems)
    return out


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for listing valid field names)."""
    model: Any = Space
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _clean_loc(loc: Sequence[Any]) -> tuple:
    # Drop discriminator tags ("<fixed>") and pydantic's generic/union member names ("Choices[float]").
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith("<") or "[" in p)))


_DIMENSION_FIELDS = {"<choices>": ["choices"], "<range>": ["low", "high", "step", "log"]}


def _message(err: dict[str, Any], loc: tuple) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        tags = [p for p in err["loc"] if isinstance(p, str) and p in _DIMENSION_FIELDS]
        if tags:  # inside {choices: ...} or {low: ..., high: ...}
            valid = _DIMENSION_FIELDS[tags[-1]]
        else:
            model = _model_at(loc)
            valid = list(model.model_fields) if model else []
        return f"unknown field{hint(loc[-1], valid)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'|(\d+)", ctx.get("expected", ""))
        options = [a or b for a, b in expected]
        return f"{value!r} is not valid{hint(value, options)}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return msg
    if kind == "string_pattern_mismatch":
        msg = "use letters, digits, '.', '_' and '-' only"
    shown = value if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{msg[0].lower()}{msg[1:]} (got {shown!r})"


def _locate(loc: tuple, lines: dict[tuple, int]) -> int | None:
    # YAML keys are kept as written (strings); pydantic reports an int key as an int.
    by_text = {tuple(map(str, k)): v for k, v in lines.items()}
    for n in range(len(loc), -1, -1):
        key = tuple(map(str, loc[:n]))
        if key in by_text:
            return by_text[key]
    return None


def _problem(loc: tuple, message: str, source: str | None, lines: dict[tuple, int],
             overrides: list[tuple[str, Any, str]]) -> Problem:
    dotted = ".".join(str(p) for p in loc)
    for path, _, text in reversed(overrides):
        if dotted == path or dotted.startswith(path + ".") or path.startswith(dotted + "."):
            return Problem(message, dotted, file=f"--set {text}")
    return Problem(message, dotted, file=source, line=_locate(loc, lines) if source else None)


def validate_data(data: Any, *, source: str | None = None, lines: dict[tuple, int] | None = None,
                  overrides: Sequence[str] = ()) -> Space:
    """Validate already-parsed data (+ overrides) in both stages; raise one SpaceError with every problem."""
    lines = lines or {}
    parsed = parse_overrides(overrides)
    if not isinstance(data, dict):
        raise SpaceError(Problem("a space must be a mapping (key: value lines) starting with 'version: 1'",
                                 file=source, line=1 if source else None))
    data = copy.deepcopy(data)
    for path, value, _ in parsed:
        _set_path(data, path.split("."), value)
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        typos = {(_clean_loc(e["loc"])[:-1], m) for e in errors if e["type"] == "extra_forbidden"
                 for m in difflib.get_close_matches(str(e["loc"][-1]), ["choices", "low", "high"], n=1, cutoff=0.6)}
        problems = []
        for err in errors:
            loc = _clean_loc(err["loc"])
            if err["type"] == "missing" and (loc[:-1], loc[-1]) in typos:
                continue
            problems.append(_problem(loc, _message(err, loc), source, lines, parsed))
        raise SpaceError(_dedupe(problems)) from None
    problems = []
    for check in CHECKS:
        for dotted, message in check(space):
            loc = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
            problems.append(_problem(loc, message, source, lines, parsed))
    if problems:
        raise SpaceError(_dedupe(problems))
    space._source = source
    return space


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def load_space(path: str | Path, *, overrides: Sequence[str] = ()) -> Space:
    """Read, override and validate a YAML space file."""
    path = Path(path)
    data, lines = _read_yaml(path)
    return validate_data(data, source=str(path), lines=lines, overrides=overrides)


def space_from_dict(data: dict[str, Any], *, overrides: Sequence[str] = ()) -> Space:
    """Validate a space given as plain data (as stored in a study)."""
    return validate_data(data, overrides=overrides)
