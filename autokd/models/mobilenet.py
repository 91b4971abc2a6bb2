"""MobileNetV2 (Sandler et al. 2018) as data: a stage table scaled by the NAS choices.

``conv: depthwise`` is the paper's cheap convolution: 1×1 expansion, k×k depthwise conv, 1×1 projection.
``conv: standard`` replaces the expansion and the depthwise conv by one full k×k convolution (the fused block of
EfficientNetV2), so the block does the same job with a standard convolution. (A full k×k conv between the expanded
channels instead would cost ~30× the FLOPs and dominate any budget.)
"""

from __future__ import annotations

import math

from torch import nn

from autokd.models.layers import GlobalAvgPool, ReLU6
from autokd.models.registry import register_family

# (expand ratio, channels, blocks, stride) per stage; expand ratio 1 stays 1, others take `expand_ratio`.
STAGES = {
    # For 8-16 px images (the embedded digits): two down-samplings, few channels.
    "small": {"stem": 16, "head": 128, "divisor": 4,
              "stages": [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 1)]},
    # The CIFAR variant of the original table (stride 1 stem, 32 px).
    "cifar": {"stem": 32, "head": 1280, "divisor": 8,
              "stages": [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1)]},
}


def make_divisible(value: float, divisor: int) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (as torchvision does)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel_size: int, conv: str):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if conv == "depthwise":
            if expand != 1:
                layers.append(conv_bn(cin, hidden, 1))
            layers.append(conv_bn(hidden, hidden, kernel_size, stride, groups=hidden))
        elif conv == "standard":
            layers.append(conv_bn(cin, hidden, kernel_size, stride))
        else:
            raise ValueError(f"unknown conv {conv!r} (valid: depthwise, standard)")
        layers.append(conv_bn(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int, width_mult: float = 1.0, depth_mult: float = 1.0,
                 kernel_size: int = 3, expand_ratio: int = 6, conv: str = "depthwise", dropout: float = 0.0,
                 stages: str = "small"):
        super().__init__()
        if stages not in STAGES:
            raise ValueError(f"unknown stage table {stages!r} (valid: {', '.join(STAGES)})")
        table = STAGES[stages]
        div = table["divisor"]
        cin = make_divisible(table["stem"] * width_mult, div)
        layers: list[nn.Module] = [conv_bn(in_channels, cin, 3)]
        for t, c, n, s in table["stages"]:
            cout = make_divisible(c * width_mult, div)
            for i in range(max(1, math.ceil(n * depth_mult))):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, 1 if t == 1 else expand_ratio,
                                               kernel_size, conv))
                cin = cout
        head = make_divisible(table["head"] * max(1.0, width_mult), div)
        layers.append(conv_bn(cin, head, 1))
        self.features = nn.Sequential(*layers)
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register_family("mobilenetv2",
                 fields={"width_mult", "depth_mult", "kernel_size", "expand_ratio", "conv", "dropout", "stages"})
def mobilenetv2(**kwargs) -> nn.Module:
    return MobileNetV2(**kwargs)
