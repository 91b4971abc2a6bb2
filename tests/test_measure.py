"""FLOPs (torch's FlopCounterMode), parameters and accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autokd.measure import accuracy, count_params, flops, layer_flops
from autokd.models import build_model

SHAPE = (1, 8, 8)


def mb_flops(**arch) -> int:
    torch.manual_seed(0)
    return flops(build_model("mobilenetv2", num_classes=10, in_channels=1, **arch), SHAPE)


def test_known_counts_of_single_layers():
    # FlopCounterMode counts 2 x multiply-accumulates
    assert flops(nn.Linear(10, 5), (10,)) == 2 * 10 * 5
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False))
    assert flops(conv, (1, 8, 8)) == 2 * (1 * 9) * 4 * 8 * 8
    strided = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False))
    assert flops(strided, (2, 8, 8)) == 2 * (2 * 9) * 3 * 4 * 4
    depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False))
    assert flops(depthwise, (4, 8, 8)) == 2 * 9 * 4 * 8 * 8


def test_flops_grow_with_width_mult():
    counts = [mb_flops(width_mult=w) for w in (0.25, 0.5, 1.0)]
    assert counts[0] < counts[1] < counts[2]


def test_flops_grow_with_kernel_size():
    for w in (0.25, 0.5):
        counts = [mb_flops(width_mult=w, kernel_size=k) for k in (1, 3, 5, 7)]
        assert counts == sorted(counts) and len(set(counts)) == 4


def test_flops_grow_with_depth_and_expansion():
    assert mb_flops(width_mult=0.25, depth_mult=0.5) < mb_flops(width_mult=0.25) < mb_flops(width_mult=0.25,
                                                                                             depth_mult=2.0)
    assert mb_flops(width_mult=0.25, expand_ratio=2) < mb_flops(width_mult=0.25, expand_ratio=6)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_standard_conv_costs_more_than_depthwise(kernel_size):
    depthwise = mb_flops(width_mult=0.25, kernel_size=kernel_size, conv="depthwise")
    standard = mb_flops(width_mult=0.25, kernel_size=kernel_size, conv="standard")
    assert standard > 2 * depthwise


def test_flops_grow_with_image_size():
    model = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25)
    assert flops(model, (1, 8, 8)) < flops(model, (1, 16, 16))


def test_teacher_flops_grow_with_width():
    r = [flops(build_model("resnet", num_classes=10, in_channels=1, width=w), SHAPE) for w in (4, 8, 16)]
    assert r[0] < r[1] < r[2]


@pytest.mark.parametrize("family,arch", [("mobilenetv2", {"width_mult": 0.25}), ("resnet", {"width": 8})])
def test_per_layer_flops_add_up_to_the_total(family, arch):
    model = build_model(family, num_classes=10, in_channels=1, **arch)
    total, per_leaf = layer_flops(model, SHAPE)
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    assert per_leaf and set(per_leaf) <= leaves
    assert sum(per_leaf.values()) == total
    assert per_leaf["classifier"] == 2 * model.classifier.in_features * 10
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs <= set(per_leaf)


def test_flops_use_one_image_in_eval_mode_and_restore_the_mode():
    model = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = flops(model, SHAPE)
    assert model.training
    model.eval()
    assert flops(model, SHAPE) == a and not model.training
    for k, v in model.state_dict().items():  # BatchNorm running stats untouched
        assert torch.equal(v, before[k]), k


def test_count_params():
    assert count_params(nn.Linear(10, 5)) == 55
    assert count_params(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4))) == 36 + 8


class Fixed(nn.Module):
    """Returns given logits, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[: len(x)]


def test_accuracy_is_a_fraction():
    y = torch.tensor([0, 1, 2, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0]), 3).float()
    assert accuracy(Fixed(logits), torch.zeros(4, 1), y) == pytest.approx(0.5)
    assert accuracy(Fixed(torch.nn.functional.one_hot(y, 3).float()), torch.zeros(4, 1), y) == 1.0


def test_accuracy_of_nothing_is_nan():
    assert math.isnan(accuracy(Fixed(torch.zeros(0, 3)), torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)))
