"""Compression stage of a trial: structured pruning (:mod:`.prune`) and quantization-aware training
(:mod:`.quantize`). The cost of the result is measured by :func:`autokd.measure.cost_metrics`.

Order in a trial: dense training -> :func:`prune_model` -> :func:`quantize_model` -> fine-tuning (QAT), so that
pruning ranks float channels and the fine-tune both recovers the pruned accuracy and adapts to the quantizers.
"""

from autokd.compress.prune import PRUNE_METHODS, prune_model
from autokd.compress.quantize import (QUANT_BITS, QuantConv2d, QuantLinear, default_act_bits, layer_bits,
                                      quantize_model)

__all__ = ["PRUNE_METHODS", "prune_model", "QUANT_BITS", "quantize_model", "default_act_bits", "layer_bits", "QuantConv2d",
           "QuantLinear"]
