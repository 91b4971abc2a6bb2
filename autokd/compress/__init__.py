"""Compression stage of a trial: structured pruning (:mod:`.prune`) and quantization-aware training
(:mod:`.quantize`). The cost of the result is measured by :func:`autokd.measure.cost_metrics`.

Order in a trial: dense training -> :func:`prune_model` -> :func:`quantize_model` -> fine-tuning (QAT), so that
pruning ranks float channels and the fine-tune both recovers the pruned accuracy and adapts to the quantizers.
"""

from autokd.compress.prune import NNI_PRUNE_METHODS, PRUNE_METHODS, prune_model
from autokd.compress.quantize import (QUANT_BITS, QUANTIZERS, LsqConv2d, LsqLinear, QuantConv2d, QuantLinear,
                                      default_act_bits, layer_bits, layer_quantizers, quantize_model)

__all__ = ["PRUNE_METHODS", "NNI_PRUNE_METHODS", "prune_model", "QUANT_BITS", "QUANTIZERS", "quantize_model",
           "default_act_bits", "layer_bits", "layer_quantizers", "QuantConv2d", "QuantLinear", "LsqConv2d",
           "LsqLinear"]
