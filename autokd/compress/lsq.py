"""Learned step size quantization (LSQ) wrappers: ``compress.quantizer: lsq``.

Learned step size quantization (Esser et al. 2020, "Learned Step Size Quantization"), by
:class:`LsqConv2d` / :class:`LsqLinear`. One step size per tensor for the weight and one for the input, both
trained with the model (``nn.Parameter``); integers symmetric ``[-2^(b-1), 2^(b-1) - 1]`` for weights, and for
inputs ``[0, 2^b - 1]`` when the first training batch is non-negative (after a ReLU), else signed; steps initialized
to ``2 mean|x| / sqrt(qmax)``; their gradient scaled by ``1 / sqrt(N qmax)`` (N: weights of the layer, or input
features per image); rounding straight-through. Per tensor as in the paper, and so that a quantized model can still be
pruned (a per-channel step would have to be pruned along with its channels). Measured by ``bench/compress.py``
(digits, 3 seeds, unpruned): W4A4 94.8% vs minmax 93.7%; W2A4 85.9% vs 86.0%; W2A2 58.6% vs 19.9% (chance 10%):
LSQ rescues 2-bit activations from collapse but stays 27 points below 4-bit ones, so the default activation bits
stay at least 4 for both quantizers. (Measured with the exact forward of :func:`_grad_scale`; before it, the 1-ulp
differences alone had moved the 2-bit cells to W2A4 86.6%, W2A2 56.2%: 2-bit training is that sensitive.)

LSQ and weight decay: the steps are ordinary parameters of the model, so ``autokd.train`` (one parameter group)
trains them with the weights' optimizer, learning rate and weight decay (``train.weight_decay``, 5e-4 by default),
which pulls every step toward 0 (a finer grid that clips more). The paper, too, learns the steps with the
network's own SGD (it scales their gradient and describes no separate optimizer settings). autokd does not exclude
them from weight decay, and ``bench/compress.py``'s LSQ numbers above were measured with their steps decayed.
Excluding them (a second parameter group at weight decay 0; bench/compress.py's LSQ cells, seeds 0-8, mean of val
and test accuracy) changed nothing beyond the seed noise: W4A4 -0.4 ± 0.2 points (standard error), W2A4 +0.4 ± 1.5,
W2A2 +3.1 ± 2.1 (7 of 9 seeds better); the mean learned step ended within about 1% either way.

Why native and not NNI 3.0's quantizers (``nni.compression.quantization``), tried on autokd's models in autokd's loop:
``LsqQuantizer`` initializes every step at the constant 0.01 (the paper's initialization is commented out in its
``init_scale``), quantizes inputs on a signed grid only (a ReLU output keeps half the levels), and trained in
``autokd.train.fit`` it stayed at chance (W4A4 11.9%, W2A2 9.7% validation accuracy, seed 0, where this LSQ reaches
95.0% / 55.0%). Both it and ``QATQuantizer`` wrap each layer with an ``_nni_wrapper`` child: FlopCounterMode then
attributes no FLOPs to the layers (BitOps came out 0), torch-pruning a wrapped model breaks its forward ("TypeError:
cannot assign 'torch.FloatTensor' as parameter 'weight' (torch.nn.Parameter or None expected)"), and the saved
``_nni_wrapper.*`` state rebuilds only by re-running NNI's wrapping (NNI needed to load a model). ``QATQuantizer``
is min/max fake quantization, which ``minmax`` already is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from autokd.compress.quantize import QParams, QuantConv2d, QuantLinear, _FakeQuant


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` in the forward, bit for bit, ``g * dL/dx`` in the backward.

    Exact because the forward adds nothing but ``y.detach() - y == +0`` (``y = x g``, finite): the textbook
    ``(x - x g).detach() + x g`` rounds twice and came out 1 ulp off ``x`` for ~0.5% of random steps, so the step a
    layer trained with differed from the ``|w_step|`` / ``|a_step|`` its grids (and an export) report. Subtracting
    the zero, not adding it, keeps the sign of a ``-0.0``."""
    y = x * g
    return x.detach() - (y.detach() - y)


def _round_pass(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` (half to even, as torch's fake-quant ops) in the forward, bit for bit (a ``-0.0`` included),
    identity in the backward; exact as :func:`_grad_scale` is (``(x.round() - x).detach() + x`` is exact for the
    clamped values LSQ rounds, but gives ``+0.0`` for ``round(-0.3) == -0.0``)."""
    return x.round().detach() - (x.detach() - x)


def _lsq(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, n: int) -> torch.Tensor:
    """LSQ fake quantization: ``round(clamp(x / s, qmin, qmax)) * s`` with ``s``'s gradient scaled by
    ``1 / sqrt(n qmax)``; the gradient of ``x`` passes inside the range (straight-through)."""
    s = _grad_scale(step, 1.0 / math.sqrt(max(n, 1) * max(qmax, 1))).abs().clamp_min(LSQ_MIN_STEP)
    return _round_pass((x / s).clamp(qmin, qmax)) * s


LSQ_MIN_STEP = 1e-8


def _lsq_init(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """The paper's initial step: ``2 mean|x| / sqrt(qmax)``."""
    return (2 * x.detach().abs().float().mean() / math.sqrt(qmax)).clamp_min(LSQ_MIN_STEP)


class _Lsq(_FakeQuant):
    """Learned step size quantization (see the module docstring): per-tensor steps ``w_step`` and ``a_step``
    (parameters, trained by the model's optimizer, weight decay included), ``a_signed`` (whether the input grid is
    signed, fixed by the first training batch) and ``act_ready`` (whether ``a_step`` was initialized) as buffers."""

    quantizer = "lsq"
    _QUANT_STATE = ("w_step", "a_step", "a_signed", "act_ready")
    w_step: nn.Parameter
    a_step: nn.Parameter
    a_signed: torch.Tensor

    def _init_quant(self, w_bits: int, a_bits: int) -> None:
        device = self.weight.device
        self.w_bits, self.a_bits = w_bits, a_bits
        self.w_step = nn.Parameter(torch.ones((), device=device))
        self.a_step = nn.Parameter(torch.ones((), device=device))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool, device=device))
        self.register_buffer("act_ready", torch.zeros((), dtype=torch.bool, device=device))
        self._calibrated = self._signed = False  # Python mirrors of the buffers: a forward never reads a GPU flag
        self._init_weight_step()

    def _init_weight_step(self) -> None:
        if self.w_bits < 32:
            with torch.no_grad():
                self.w_step.copy_(_lsq_init(self.weight, 2 ** (self.w_bits - 1) - 1))

    def set_bits(self, w_bits: int, a_bits: int) -> None:
        """Change the bit widths; the learned steps start again from the paper's initialization."""
        super().set_bits(w_bits, a_bits)
        self._init_weight_step()
        self.act_ready.fill_(False)
        self._calibrated = False

    def _weight_range(self) -> tuple[int, int]:
        qmax = 2 ** (self.w_bits - 1) - 1
        return -qmax - 1, qmax

    def _input_range(self, signed: bool) -> tuple[int, int]:
        if signed:
            return -(2 ** (self.a_bits - 1)), 2 ** (self.a_bits - 1) - 1
        return 0, 2 ** self.a_bits - 1

    def weight_qparams(self) -> QParams | None:
        """The weight's integer grid: symmetric, per tensor, ``scale = |w_step|``; ``None`` at 32 bits."""
        if self.w_bits >= 32:
            return None
        qmin, qmax = self._weight_range()
        scale = self.w_step.detach().abs().float().clamp_min(LSQ_MIN_STEP)
        return QParams(scale, torch.zeros((), dtype=torch.int32, device=scale.device), qmin, qmax)

    def quantized_weight(self) -> torch.Tensor:
        if self.w_bits >= 32:
            return self.weight
        qmin, qmax = self._weight_range()
        w = self.weight
        return _lsq(w.float(), self.w_step, qmin, qmax, w.numel()).to(w.dtype)

    def input_qparams(self) -> QParams | None:
        """The input's integer grid: per tensor, zero point 0, ``scale = |a_step|``, ``[0, 2^b - 1]`` or signed
        ``[-2^(b-1), 2^(b-1) - 1]``; ``None`` at 32 bits or before any training batch initialized the step."""
        if self.a_bits >= 32 or not self._calibrated:
            return None
        qmin, qmax = self._input_range(self._signed)
        scale = self.a_step.detach().abs().float().clamp_min(LSQ_MIN_STEP)
        return QParams(scale, torch.zeros((), dtype=torch.int32, device=scale.device), qmin, qmax)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits >= 32:
            return x
        if self._calibrated:
            step, signed = self.a_step, self._signed
        else:
            signed = bool(x.detach().min() < 0)
            init = _lsq_init(x, self._input_range(signed)[1])
            if self.training:  # the first training batch initializes the step (and fixes the grid's sign)
                with torch.no_grad():
                    self.a_step.copy_(init)
                    self.a_signed.fill_(signed)
                    self.act_ready.fill_(True)
                self._calibrated, self._signed = True, signed
                step = self.a_step
            else:  # evaluated before any training batch: this batch's own initial step, nothing stored
                step = init
        qmin, qmax = self._input_range(signed)
        return _lsq(x.float(), step, qmin, qmax, x[0].numel()).to(x.dtype)


    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._signed = bool(self.a_signed)


class LsqConv2d(_Lsq, QuantConv2d):
    """``nn.Conv2d`` with LSQ fake quantization of its weight and input (learned per-tensor steps)."""


class LsqLinear(_Lsq, QuantLinear):
    """``nn.Linear`` with LSQ fake quantization of its weight and input (learned per-tensor steps)."""
