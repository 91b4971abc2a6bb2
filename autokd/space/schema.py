"""The schema of a search space (pydantic v2, ``extra="forbid"``, ``version: 1``).

A field that can be searched takes a fixed value, ``{choices: [...]}`` or ``{low:, high:, step:?, log:?}``.
The Optuna parameter name of a searched field is its dotted path (``model.width_mult``); the searched dimensions,
their conditions and resolving a space at given values are :mod:`autokd.space.dimensions`.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator


T = TypeVar("T")
N = TypeVar("N", int, float)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choices(_Strict, Generic[T]):
    """A categorical dimension: ``{choices: [a, b, c]}``."""

    choices: list[T] = Field(description="The values to search over (at least one, all distinct).")


class Range(_Strict, Generic[N]):
    """A numeric dimension: ``{low:, high:, step:?, log:?}`` (bounds inclusive)."""

    low: N = Field(description="Smallest value (inclusive).")
    high: N = Field(description="Largest value (inclusive).")
    step: N | None = Field(None, description="Spacing of the values searched (default: continuous for floats, 1 "
                           "for ints); not with log.")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")


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

    name: DatasetName = Field("digits", description="'digits' (scikit-learn's bundled 8x8 digits, offline), "
                              "'mnist', 'fashion_mnist', 'cifar10', 'cifar100' (torchvision or Debian files under "
                              "root), or 'imagefolder' (root holds one sub-folder per class).")
    root: str | None = Field(None, description="Folder holding (or receiving) the dataset files.")
    download: bool = Field(False, description="Allow torchvision to download the dataset into root.")
    image_size: int | None = Field(None, ge=4, le=1024, description="Resize images to this side (default: native).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the training images held out for "
                                "validation (the accuracy the search optimizes).")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Used where the dataset has no official test split.")
    split_seed: int = Field(0, description="Seed of the stratified train/validation/test split.")
    limit: int | None = Field(None, ge=10, description="Use at most this many training images (stratified).")


class ModelSpec(_Strict):
    """The student architecture: a family from the registry and its NAS choices."""

    family: str = Field("mobilenetv2", description="Student family from the model registry (e.g. 'mobilenetv2', "
                        "'resnet').")
    width_mult: SFloat = Field(1.0, description="Channel width multiplier, in (0, 8].")
    depth_mult: SFloat = Field(1.0, description="Blocks-per-stage multiplier, in (0, 8].")
    kernel_size: SInt = Field(3, description="Convolution kernel size (odd, 1-11).")
    expand_ratio: SInt = Field(6, description="Expansion ratio of the inverted residual blocks (1-12).")
    conv: _searchable(Conv, numeric=False) = Field("depthwise", description="Convolution of the blocks: "
                                                   "'depthwise' (separable, MobileNet's) or 'standard'.")
    dropout: SFloat = Field(0.0, description="Dropout before the classifier, in [0, 1).")
    stages: Literal["small", "cifar"] = Field("small", description="Stage table of the family: 'small' (8-16 px "
                                              "images) or 'cifar' (32 px).")


class TeacherSpec(_Strict):
    """The KD teacher: trained once and cached, or loaded from a checkpoint."""

    family: str = Field("resnet", description="Teacher family from the model registry (e.g. 'resnet').")
    width: int = Field(32, ge=4, description="Channels of the first stage.")
    depth: int = Field(1, ge=1, le=16, description="Residual blocks per stage.")
    epochs: int = Field(15, ge=1, description="Training epochs of the teacher (trained once, then cached).")
    lr: float = Field(0.05, gt=0, description="Learning rate of the teacher.")
    checkpoint: str | None = Field(None, description="A state_dict (.pt) of this architecture to load instead of training.")
    ensemble: int = Field(1, ge=1, le=16, description="Teachers trained with different seeds; KD uses their mean logits.")
    augment: Literal["auto", False] = Field(
        "auto", description="'auto': when any trial can augment, the teacher trains on the students' view pool "
        "(one view per image per epoch) before labelling it; false: clean images only (its soft targets over "
        "the views are then often wrong).")


LayerKeyword = Literal["all", "first", "middle", "last"]
# Which stage ends a feature method hints: a keyword over the resolutions the student and the teacher share
# (largest first), or one index into them.
SLayers = _searchable(Union[LayerKeyword, Annotated[int, Field(ge=0)]], numeric=False)


class DistSettings(_Strict):
    """DIST's settings (Huang et al. 2022, section 4)."""

    beta: SFloat = Field(1.0, description="Weight of the inter-class (per image) correlation term, >= 0.")
    gamma: SFloat = Field(1.0, description="Weight of the intra-class (per class) correlation term, >= 0.")
    tau: SFloat = Field(1.0, description="Softmax temperature of both terms, in [0.1, 100].")


class LogitStdSettings(_Strict):
    """Logit standardization's settings (Sun et al. 2024)."""

    temperature: SFloat = Field(2.0, description="Base temperature applied to the standardized logits, in "
                                "[0.1, 100] (the paper's CIFAR-100 value).")


class ATSettings(_Strict):
    """Attention transfer's settings (Zagoruyko & Komodakis 2017)."""

    beta: SFloat = Field(1000.0, description="The paper's beta: the term is beta/2 times the attention maps' "
                         "mean squared distance summed over the hinted stages, >= 0.")
    layers: SLayers = Field("all", description="Stage ends hinted, among the resolutions the student and the "
                            "teacher share (largest first): 'all', 'first', 'middle', 'last' or one index.")


class FitNetsSettings(_Strict):
    """FitNets' settings (Romero et al. 2015; one-stage training and weight as in the CRD benchmark)."""

    weight: SFloat = Field(100.0, description="Weight of the hint MSE term, >= 0.")
    layers: SLayers = Field("middle", description="Stage ends hinted through a 1x1 regressor, among the "
                            "resolutions the student and the teacher share: 'all', 'first', 'middle' (the "
                            "paper's), 'last' or one index.")


class PKTSettings(_Strict):
    """PKT's settings (Passalis & Tefas 2018; weight as in the CRD benchmark)."""

    weight: SFloat = Field(30000.0, description="Weight of the KL term between the penultimate features' "
                           "similarity distributions, >= 0.")


_SETTINGS_BLOCKS: dict[str, type[_Strict]] = {"dist": DistSettings, "logit_std": LogitStdSettings,
                                               "at": ATSettings, "fitnets": FitNetsSettings, "pkt": PKTSettings}


class DistillSpec(_Strict):
    """Knowledge distillation. Logit methods: alpha * L_method(student, teacher) + (1 - alpha) * CE (Hinton's by
    default: L = T^2 * KL(teacher || student)). Feature methods: CE + weight * L_method, as their papers train."""

    kd: SBool = Field(False, description="Distill from the teacher; {choices: [true, false]} searches KD as a "
                      "factor (with KD twins: every configuration run with and without it).")
    method: _searchable(KDMethod, numeric=False) = Field(
        "hinton", description="The KD method, used when KD is on. On the cached teacher logits: 'hinton' (soft "
        "targets, Hinton et al. 2015), 'dist' (inter- and intra-class correlation, Huang et al. 2022), "
        "'logit_std' (soft targets of standardized logits, Sun et al. 2024). On the teacher's features, the "
        "teacher running on each batch: 'at' (attention transfer, Zagoruyko & Komodakis 2017), 'fitnets' (hints "
        "through a 1x1 regressor, Romero et al. 2015), 'pkt' (probabilistic knowledge transfer of the "
        "penultimate features, Passalis & Tefas 2018). {choices: [...]} searches it: every configuration then "
        "runs KD-off once and KD-on once per method.")
    temperature: SFloat = Field(4.0, description="Softmax temperature T of Hinton's KD term, in [0.1, 100].")
    alpha: SFloat = Field(0.9, description="Weight of a logit method's KD term against cross-entropy, in [0, 1]; "
                          "the feature methods add their term, with its own weight, to the full cross-entropy.")
    dist: DistSettings = Field(DistSettings(), description="Settings of method 'dist'.")
    logit_std: LogitStdSettings = Field(LogitStdSettings(), description="Settings of method 'logit_std'.")
    at: ATSettings = Field(ATSettings(), description="Settings of method 'at'.")
    fitnets: FitNetsSettings = Field(FitNetsSettings(), description="Settings of method 'fitnets'.")
    pkt: PKTSettings = Field(PKTSettings(), description="Settings of method 'pkt'.")
    feature_member: int = Field(0, ge=0, description="With a teacher ensemble, the member whose features the "
                                "feature methods read (0: the first).")
    teacher: TeacherSpec = Field(TeacherSpec(), description="The teacher that KD distills from.")


class TrainSpec(_Strict):
    """The one training loop's settings; the same for every trial (except what is searched)."""

    epochs: int = Field(10, ge=1, description="Training epochs of every trial.")
    batch_size: int = Field(64, ge=2, description="Images per step (at least 2: BatchNorm needs two samples).")
    optimizer: _searchable(Literal["sgd", "adamw"], numeric=False) = Field("sgd", description="'sgd' (with "
                                                                           "momentum) or 'adamw'.")
    lr: SFloat = Field(0.05, description="Peak learning rate, in (0, 10].")
    weight_decay: SFloat = Field(5e-4, description="Weight decay, in [0, 1].")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov when > 0; 0 trains plain SGD).")
    schedule: Literal["cosine", "onecycle"] = Field("cosine", description="Learning-rate schedule: 'cosine' "
                                                    "annealing or 'onecycle'.")
    label_smoothing: SFloat = Field(0.0, description="Label smoothing of the cross-entropy term, in [0, 1).")
    augment: SBool = Field(False, description="Random shifts (and flips/crops on natural images) from a view pool.")
    augment_views: int = Field(4, ge=1, le=64, description="Augmented views per training image, drawn once "
                               "from the seed; the teacher's logits over them are cached.")
    grad_clip: float | None = Field(5.0, gt=0, description="Clip the gradient norm (keeps low-bit QAT stable).")
    seed: int = Field(0, description="Initialization, data order and augmentation of every trial.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Training arithmetic: 'bf16' autocasts "
                                               "on CUDA (fake-quant ops stay fp32); the CPU trains in fp32.")
    repeats: int = Field(1, ge=1, le=32, description="Train every configuration this many times, each repeat "
                         "with its own random streams derived from (seed, repeat, phase); the trial reports the "
                         "mean and keeps each repeat's metrics.")


PruneMethod = Literal["l1", "l2", "random", "taylor", "bn_scale", "nni-l1", "nni-l2", "nni-fpgm", "nni-taylor"]
Quantizer = Literal["minmax", "lsq"]
# KD methods (autokd.distill): the logit methods run on the cached teacher logits, the feature methods on the
# teacher's features (the teacher runs on each batch)
KDMethod = Literal["hinton", "dist", "logit_std", "at", "fitnets", "pkt"]
# Methods with a settings block under distill (distill.<method>.*)
METHOD_SETTINGS = ("dist", "logit_std", "at", "fitnets", "pkt")


class CompressSpec(_Strict):
    """Structured pruning and quantization-aware training, run after dense training as a fine-tune phase.

    Every configuration trains ``train.epochs + finetune_epochs`` epochs in all, pruned/quantized or not.
    """

    prune_ratio: SFloat = Field(0.0, description="Share of channels removed per layer (0 = no pruning).")
    prune_method: PruneMethod = Field("l1", description="Channel ranking: l1/l2 (filter norms), random, taylor, "
                                      "bn_scale, or NNI's scores summed over coupled channels (nni-l1, nni-l2, "
                                      'nni-fpgm, nni-taylor: pip install "autokd[nni]").')
    round_to: int = Field(1, ge=1, description="Round pruned channel counts to a multiple of this.")
    bits: SInt = Field(32, description="Weight bits (2-8), or 32 for no quantization.")
    act_bits: int | None = Field(None, ge=2, le=8, description="Activation bits of quantized layers "
                                 "[default: bits, but at least 4: min/max-ranged 2-3 bit activations collapse].")
    quantizer: _searchable(Quantizer, numeric=False) = Field(
        "minmax", description="How quantized layers get their grids: 'minmax' (weights per channel from max|w|, "
        "activations from running min/max) or 'lsq' (learned step sizes, Esser et al. 2020).")
    keep_first_last: bool = Field(True, description="Keep the first conv and the classifier at 8 bits.")
    finetune_epochs: int = Field(2, ge=0, description="Epochs after pruning/quantization (run by every trial).")
    finetune_lr: float | None = Field(None, gt=0, le=10,
                                      description="Fine-tune learning rate [default: train.lr / 2].")


Objective = Literal["flops", "bitops", "size", "params"]
DesignLevel = Union[bool, int, float, str]


def _dotted_keys_only(schema: dict[str, Any]) -> None:
    """JSON Schema of a map keyed by dotted field paths: every key must look like one (editors flag the rest)."""
    values = schema.pop("additionalProperties", {})
    schema["patternProperties"] = {r"^[a-z_]+(\.[a-z_]+)+$": values}
    schema["additionalProperties"] = False


class DesignSpec(_Strict):
    """The design phase: the study's first pairs form a balanced design over the searched techniques' levels,
    each run with its KD twin; then the sampler continues the Pareto search (see :mod:`autokd.study.design`)."""

    kind: Literal["auto", "full", "fraction", "d_optimal"] = Field(
        "auto", description="'auto': a full factorial up to 32 cells, else a resolution-IV two-level fraction, "
        "else (mixed levels) a D-optimal near-balanced design; or force 'full', 'fraction' or 'd_optimal'.")
    replicates: Union[int, Literal["auto"]] = Field(
        "auto", description="Replicates of the design (each with its own random streams), or 'auto': run the "
        "fewest the verdict model can be fitted to as a pilot, then as many as its noise says reach half_width "
        "(within search.n_trials). Not part of the space hash.")
    levels: dict[str, list[DesignLevel]] = Field(
        {}, description="Design levels of searched numeric ranges by dotted path, e.g. {train.lr: [0.03, 0.08]} "
        "[default: each range's low and high]; a choices field is designed at its choices.",
        json_schema_extra=lambda s: _dotted_keys_only(s))
    runs: int | None = Field(None, ge=2, le=4096, description="Runs of a D-optimal design [default: the smallest "
                             "near-balanced size with 8 residual degrees of freedom].")
    margin: float = Field(1.0, gt=0, le=50, description="Orthogonality margin in accuracy points the design is "
                          "sized for (the report's --margin). Not part of the space hash.")
    half_width: float | None = Field(None, gt=0, le=50, description="Target: every level difference's 90% "
                                     "half-width at most this many points [default: margin / 2]. Not part of "
                                     "the space hash.")

    @property
    def target(self) -> float:
        """The target half-width in accuracy points."""
        return self.half_width if self.half_width is not None else self.margin / 2


class SearchSpec(_Strict):
    """How Optuna searches: sampler, budget, seeds, objectives."""

    sampler: Literal["tpe", "nsga2", "random", "gp"] = Field(
        "gp", description="'gp' (Optuna's GPSampler; measured best on the default space, bench/samplers.py; about "
        "0.7 s per proposal, more while other workers' trials run), 'tpe', 'nsga2' or 'random'. Not part of the "
        "space hash: it can be changed when a study is resumed.")
    n_trials: int = Field(20, ge=1, description="Number of COMPLETE trials the study should reach.")
    seed: int = Field(0, description="Seed of the sampler.")
    objectives: list[Objective] = Field(["flops"], min_length=1, max_length=2,
                                        description="Cost objectives minimized beside validation accuracy.")
    startup_trials: int = Field(6, ge=0, description="Random trials before GP or TPE models the space.")
    population_size: int = Field(8, ge=2, description="NSGA-II population size.")
    max_failures: int = Field(5, ge=1, description="Stop after this many FAIL trials in one run.")
    kd_twins: bool | None = Field(None, description="Run every trial's twin with distill.kd flipped "
                                  "[default: true when distill.kd is searched].")
    early_stop: bool | None = Field(None, description="Stop (PRUNED) a trial whose accuracy, extrapolated "
                                    "optimistically, cannot reach the Pareto front at its cost [default: true "
                                    "when distill.kd is not searched: stopping conditions KD pairs on survival].")
    design: DesignSpec | None = Field(None, description="Run a balanced design over the searched techniques' "
                                      "levels first, each point with its KD twin, so that the report can decide "
                                      "every technique's orthogonality to KD (needs distill.kd searched).")


class Space(_Strict):
    """A whole search space file."""

    version: Literal[1] = Field(description="Version of the space format: 1.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=100,
                      description="Study name (letters, digits, '.', '_', '-'); the study is kept in "
                      "studies/NAME.db unless --storage says otherwise.")
    dataset: DatasetSpec = Field(DatasetSpec(), description="Which data, how it is split, at what image size.")
    model: ModelSpec = Field(ModelSpec(), description="The student architecture and its NAS choices.")
    distill: DistillSpec = Field(DistillSpec(), description="Knowledge distillation and its teacher.")
    train: TrainSpec = Field(TrainSpec(), description="The training loop, the same for every trial.")
    compress: CompressSpec = Field(CompressSpec(), description="Structured pruning and quantization-aware "
                                   "training, run as a fine-tune phase.")
    search: SearchSpec = Field(SearchSpec(), description="How Optuna searches: sampler, budget, seeds, "
                               "objectives.")

    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The file the space was read from (``None`` when built from a dict)."""
        return self._source
