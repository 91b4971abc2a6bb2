"""Structured (channel) pruning with torch-pruning's dependency graph.

Channels are physically removed, so a pruned model is a smaller dense model: FLOPs, parameters and latency all
drop, and it trains with the ordinary loop. Unstructured masks would leave FLOPs (as FlopCounterMode counts them)
unchanged, which is why the search uses structured pruning.

torch-pruning traces the model once and groups every layer whose channels must be removed together: the 1×1
expansion, the depthwise conv (``groups == channels``) and its BatchNorm of an inverted residual; the two sides of a
residual ``x + f(x)`` (all blocks of a stage share one channel set); the head conv and the classifier's inputs.
Removing channels by hand would have to re-derive exactly that coupling for every family.

The ratio is applied uniformly (``global_pruning=False``): every group loses the same fraction of its channels.
Global ranking would let magnitudes of differently-scaled layers decide the architecture, which makes the pruning
ratio a worse hyperparameter (the same ratio gives very different models from trial to trial).

NNI criteria (``nni-l1``, ``nni-l2``, ``nni-fpgm``; ``pip install "autokd[nni]"``, imported only when used): NNI 3.0's
pruners score the output channels of every conv of the trained model (L1/L2 norm of each filter, or FPGM's distance
to the other filters: a filter near the geometric median is replaceable). NNI's masks are per layer and NNI's own
speedup does not run on current torch, so autokd removes the channels itself, through the same dependency graph as
the native criteria: a group's channel score is the sum of NNI's scores of that channel over the group's convs
(the expansion, the depthwise conv, both sides of a residual add). Pruning stays uniform per group, so the pruned
architecture (FLOPs, parameters) is the one the native criteria give at the same ratio. ``nni-taylor`` gives NNI's
Taylor pruner the training evaluator it needs: backward passes over the calibration images (as the native
``taylor``), through an optimizer of learning rate 0 on which NNI counts its steps.

Scores are one-shot: NNI scores every conv of the unpruned model once, before torch-pruning removes anything, so a
filter's L1/L2/FPGM score still counts its weights on input channels that another group removes (and Taylor's its
gradients through them). This is what NNI's own one-shot pruners do (all masks from one set of metrics on the
unpruned model, then one speedup), and what the native criteria do too: torch-pruning 1.6 estimates every group's
importance before it prunes any (checked: every ``MagnitudeImportance`` call sees the unpruned weights).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

NNI_PRUNE_METHODS = ("nni-l1", "nni-l2", "nni-fpgm", "nni-taylor")
NNI_TAYLOR_BATCH = 64  # calibration images per backward pass of NNI's Taylor pruner
PRUNE_METHODS = ("l1", "l2", "random", "taylor", "bn_scale", *NNI_PRUNE_METHODS)
NNI_INSTALL = 'pip install "autokd[nni]"'


def _nni_pruner_class(method: str):
    """NNI's pruner class for an ``nni-*`` method (imported here: a plain install has no NNI)."""
    try:
        from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, TaylorPruner
    except ImportError as exc:
        raise ImportError(f"pruning method {method!r} needs NNI 3.0: {NNI_INSTALL} ({exc})") from exc
    except Exception as exc:  # an install broken by its dependencies need not raise ImportError
        raise ImportError(f"pruning method {method!r} needs NNI 3.0, which is installed but does not import: "
                          f"{type(exc).__name__}: {exc}") from exc
    return {"nni-l1": L1NormPruner, "nni-l2": L2NormPruner, "nni-fpgm": FPGMPruner, "nni-taylor": TaylorPruner}[method]


def _nni_taylor_metrics(pruner_class, model: nn.Module, config: list[dict], calibration, device):
    """NNI's TaylorPruner with the training evaluator it needs: one backward pass per calibration batch, in eval mode
    (BatchNorm statistics untouched, as for the native ``taylor``), through an optimizer with learning rate 0 (NNI
    counts steps on it; the weights do not move). NNI sums ``(w * dL/dw)^2`` per weight over the passes; returns
    ``(pruner, its metrics)``, the pruner still wrapping the model."""
    import nni
    from nni.compression.utils import TorchEvaluator

    x, y = calibration
    batches = [(x[i:i + NNI_TAYLOR_BATCH].to(device), y[i:i + NNI_TAYLOR_BATCH].to(device))
               for i in range(0, len(y), NNI_TAYLOR_BATCH)]
    found: dict = {}

    def training_step(batch, m):
        return F.cross_entropy(m(batch[0]), batch[1])

    def training_func(m, optimizers, step, lr_schedulers=None, max_steps=None, max_epochs=None):
        m.eval()
        with torch.enable_grad():
            for batch in batches:
                optimizers.zero_grad()
                step(batch, m).backward()
                optimizers.step()
        # Read here: NNI drops its gradient sums with its hooks when training ends.
        found["metrics"] = pruner._calculate_metrics(pruner._collect_data())

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
    evaluator = TorchEvaluator(training_func, optimizer, training_step)
    # training_steps beyond the batches run: NNI never turns its sums into masks; the scores are read from the sums
    # (all divided by the same training_steps, which leaves the ranking as it is).
    pruner = pruner_class(model, config, evaluator, training_steps=len(batches) + 1)
    try:
        pruner.compress()
    except BaseException:
        pruner.unwrap_model()
        raise
    return pruner, found.get("metrics", {})


def nni_channel_scores(model: nn.Module, method: str,
                       calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[nn.Module, torch.Tensor]:
    """NNI's score of every output channel of every ``nn.Conv2d`` of ``model`` but the classifier's: {conv: (C_out,)}.

    Higher is more important (L1/L2 norm of the filter; FPGM: summed distance to the other filters of the layer;
    Taylor: summed ``(w * dL/dw)^2`` of the filter over ``calibration``, needed for ``nni-taylor``). The model is
    wrapped by NNI only while scoring and unwrapped before returning (same modules, same weights).

    One-shot, on the model as given: :func:`prune_model` scores every conv before it removes any channel, so a
    filter's score includes its weights on input channels that an earlier-pruned group removes (the filter is ranked
    as it was in the trained model, not as it is once its inputs shrank). NNI's one-shot pruners rank the same way,
    and so do the native criteria (torch-pruning estimates all groups' importance before pruning).
    """
    pruner_class = _nni_pruner_class(method)
    head = {id(m) for m in model.classifier.modules()}
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in head}
    if not convs:
        return {}
    # The sparse ratio only matters to NNI's masks, which are not used: the scores are.
    config = [{"op_names": sorted(convs), "sparse_ratio": 0.5}]
    # NNI's public API gives only the binary masks at one ratio (get_masks/compress); the per-channel metrics behind
    # them, needed to sum scores over torch-pruning's coupled groups, come from _collect_data/_calculate_metrics.
    if method == "nni-taylor":
        pruner, metrics = _nni_taylor_metrics(pruner_class, model, config, calibration, next(model.parameters()).device)
    else:
        pruner = pruner_class(model, config)
        try:
            with torch.no_grad():
                metrics = pruner._calculate_metrics(pruner._collect_data())
        except BaseException:
            pruner.unwrap_model()
            raise
    pruner.unwrap_model()
    return {convs[name]: targets["weight"].detach().reshape(-1).float().cpu() for name, targets in metrics.items()
            if name in convs and "weight" in targets}


class GroupScoreImportance(tp.importance.Importance):
    """torch-pruning importance from given per-layer output-channel scores: a group's score of a channel is the sum
    of the scores of that channel over the group's scored layers (layers without a score add nothing; a group with
    no scored layer gets zeros, i.e. keeps its first channels, so it is still pruned at the same ratio)."""

    def __init__(self, scores: dict[nn.Module, torch.Tensor]):
        self.scores = {id(m): s for m, s in scores.items()}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        total = torch.zeros(len(group[0].idxs))  # the root layer's item lists every channel of the group
        for i, (dep, idxs) in enumerate(group):
            score = self.scores.get(id(dep.layer))
            # Only the output side of a scored conv (depthwise ones included) carries its own channel scores.
            if score is None or not isinstance(dep.layer, nn.Conv2d) or not (
                    dep.pruning_fn.__name__.endswith("out_channels")):
                continue
            root_idxs = group[i].root_idxs
            if any(r is None for r in root_idxs):
                continue
            total.scatter_add_(0, torch.as_tensor(root_idxs), score[torch.as_tensor(list(idxs))])
        return total


def _importance(method: str, model: nn.Module | None = None, calibration=None) -> tp.importance.Importance:
    # torch-pruning 1.6 importance classes; group scores are averaged over the coupled layers and mean-normalized.
    if method == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if method == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "random":
        # Draws from torch's global RNG (torch.rand), which the trial seeds: reproducible per trial seed.
        return tp.importance.RandomImportance()
    if method == "taylor":
        # |w · dL/dw| (Molchanov et al. 2019); needs .grad on every conv/linear weight, see _taylor_gradients.
        return tp.importance.TaylorImportance()
    if method == "bn_scale":
        # |gamma| of the BatchNorm after each conv (network slimming, Liu et al. 2017).
        return tp.importance.BNScaleImportance()
    if method in NNI_PRUNE_METHODS:
        return GroupScoreImportance(nni_channel_scores(model, method, calibration))
    raise AssertionError(method)  # validated before


def _validate(model: nn.Module, ratio: float, method: str, example_input, round_to: int, calibration) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= float(ratio) < 1:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown pruning method {method!r} (valid: {', '.join(PRUNE_METHODS)})")
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2 or len(example_input) < 1:
        raise ValueError("example_input must be a batched tensor (N, C, H, W) with N >= 1")
    if calibration is not None or method in ("taylor", "nni-taylor"):
        if calibration is None:
            raise ValueError(f"method {method!r} needs calibration=(x, y): a labelled batch to compute gradients on")
        if (not isinstance(calibration, (tuple, list)) or len(calibration) != 2
                or not all(isinstance(t, torch.Tensor) for t in calibration)):
            raise ValueError("calibration must be a tuple (x, y) of tensors")
        x, y = calibration
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(f"calibration x and y must be non-empty and of equal length (got {len(x)} and {len(y)})")
    if not hasattr(model, "classifier"):
        raise ValueError("model has no .classifier attribute (every registry family has one; it is kept unpruned)")


def _taylor_gradients(model: nn.Module, calibration: tuple[torch.Tensor, torch.Tensor], device) -> None:
    """Fill ``.grad`` with dL/dw of one cross-entropy batch (eval mode, so BatchNorm statistics are untouched)."""
    x, y = calibration
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()


def prune_model(model: nn.Module, *, ratio: float, method: str = "l1", example_input: torch.Tensor,
                round_to: int = 1, calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
                removed: dict[int, list[int]] | None = None) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group of ``model`` (in place) and return it.

    ``method`` ranks channels within each group: ``l1`` / ``l2`` (weight magnitude), ``random``, ``taylor``
    (first-order Taylor, needs ``calibration=(x, y)``), ``bn_scale`` (BatchNorm |gamma|), or NNI's scores summed
    over the group: ``nni-l1``, ``nni-l2``, ``nni-fpgm``, ``nni-taylor`` (needs ``calibration``) (needs NNI:
    ``pip install "autokd[nni]"``).
    ``example_input`` is a batch used only to trace the graph. ``model.classifier`` keeps its outputs (the
    classes); its inputs shrink with the head. Channel counts left in each group are rounded down to a multiple of
    ``round_to`` by torch-pruning; a group too small to keep one multiple is left unpruned.

    ``removed`` (a dict, optional) is filled with the output channels each layer lost, by ``id`` of the layer
    (indices into its channels before pruning): what follows a layer's channels from outside the model (a KD
    regressor reading a pruned stage) slices itself with it.

    ``ratio == 0`` returns the model untouched. The model keeps its device and train/eval mode; any ``.grad`` is
    cleared (parameters are replaced by smaller ones, so an existing optimizer must be rebuilt).
    """
    _validate(model, ratio, method, example_input, round_to, calibration)
    if ratio == 0:
        return model
    was_training = model.training
    device = next(model.parameters()).device
    try:
        if method == "taylor":
            _taylor_gradients(model, calibration, device)
        with torch.enable_grad():  # the dependency graph is traced through autograd
            pruner = tp.pruner.BasePruner(
                model, example_input.to(device), importance=_importance(method, model, calibration),
                global_pruning=False,
                pruning_ratio=float(ratio), ignored_layers=[model.classifier],
                round_to=round_to if round_to > 1 else None,
                # A plain tensor would otherwise first be tried as model(*example_input), i.e. split along the batch.
                forward_fn=lambda m, x: m(x))
            for group in pruner.step(interactive=True):  # what step() does, watching which channels go
                if removed is not None:
                    for dep, idxs in group:
                        if dep.pruning_fn.__name__.endswith("out_channels"):
                            removed.setdefault(id(dep.layer), []).extend(int(i) for i in idxs)
                group.prune()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)  # torch-pruning's tracing leaves the model in eval mode
    return model
