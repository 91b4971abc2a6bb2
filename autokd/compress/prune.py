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
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

PRUNE_METHODS = ("l1", "l2", "random", "taylor", "bn_scale")


def _importance(method: str) -> tp.importance.Importance:
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
    if calibration is not None or method == "taylor":
        if calibration is None:
            raise ValueError("method 'taylor' needs calibration=(x, y): a labelled batch to compute gradients on")
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
                round_to: int = 1, calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable group of ``model`` (in place) and return it.

    ``method`` ranks channels within each group: ``l1`` / ``l2`` (weight magnitude), ``random``, ``taylor``
    (first-order Taylor, needs ``calibration=(x, y)``), ``bn_scale`` (BatchNorm |gamma|). ``example_input`` is a
    batch used only to trace the graph. ``model.classifier`` keeps its outputs (the classes); its inputs shrink
    with the head. Channel counts left in each group are rounded down to a multiple of ``round_to`` by
    torch-pruning; a group too small to keep one multiple is left unpruned.

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
                model, example_input.to(device), importance=_importance(method), global_pruning=False,
                pruning_ratio=float(ratio), ignored_layers=[model.classifier],
                round_to=round_to if round_to > 1 else None,
                # A plain tensor would otherwise first be tried as model(*example_input), i.e. split along the batch.
                forward_fn=lambda m, x: m(x))
            pruner.step()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)  # torch-pruning's tracing leaves the model in eval mode
    return model
