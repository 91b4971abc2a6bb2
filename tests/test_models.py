"""The model registry and the two built-in families: shapes, scaling with the NAS choices, registry rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autokd.models import build_model, build_student, build_teacher, family_fields, register_family
from autokd.models import registry
from autokd.models.mobilenet import make_divisible
from autokd.space import space_from_dict


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family,arch", [
    ("mobilenetv2", {"width_mult": 0.25}),
    ("mobilenetv2", {"width_mult": 0.5, "kernel_size": 5, "conv": "standard", "expand_ratio": 2}),
    ("resnet", {"width": 8}),
    ("resnet", {"width": 8, "depth": 2, "width_mult": 0.5}),
])
@pytest.mark.parametrize("in_channels,size,num_classes", [(1, 8, 10), (3, 16, 7)])
def test_output_shape(family, arch, in_channels, size, num_classes):
    torch.manual_seed(0)
    model = build_model(family, num_classes=num_classes, in_channels=in_channels, **arch)
    for mode in (model.train, model.eval):
        mode()
        out = model(torch.randn(5, in_channels, size, size))
        assert out.shape == (5, num_classes)
        assert torch.isfinite(out).all()


def test_cifar_stage_table_on_32_px():
    model = build_model("mobilenetv2", num_classes=100, in_channels=3, width_mult=0.25, stages="cifar").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_unknown_stage_table():
    with pytest.raises(ValueError, match="stage table"):
        build_model("mobilenetv2", num_classes=10, in_channels=1, stages="huge")


def test_every_model_has_a_linear_classifier():
    for family in ("mobilenetv2", "resnet"):
        model = build_model(family, num_classes=6, in_channels=1)
        assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 6


def test_parameters_grow_with_width_and_depth():
    def p(**arch):
        return n_params(build_model("mobilenetv2", num_classes=10, in_channels=1, **arch))

    assert p(width_mult=0.25) < p(width_mult=0.5) < p(width_mult=1.0)
    assert p(depth_mult=0.5) < p(depth_mult=1.0) < p(depth_mult=2.0)
    assert p(kernel_size=3) < p(kernel_size=5)
    assert p(conv="depthwise") < p(conv="standard")
    assert p(expand_ratio=2) < p(expand_ratio=6)


def test_dropout_is_used():
    model = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25, dropout=0.3)
    assert model.dropout.p == 0.3


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25)
    torch.manual_seed(3)
    b = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.25)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_arguments_of_other_families_are_ignored():
    a = build_model("resnet", num_classes=10, in_channels=1, width=8, conv="standard", expand_ratio=2,
                    stages="cifar")
    b = build_model("resnet", num_classes=10, in_channels=1, width=8)
    assert [v.shape for v in a.state_dict().values()] == [v.shape for v in b.state_dict().values()]


def test_resnet_student_scales_its_width():
    small = build_model("resnet", num_classes=10, in_channels=1, width=16, width_mult=0.5)
    plain = build_model("resnet", num_classes=10, in_channels=1, width=8)
    assert [v.shape for v in small.state_dict().values()] == [v.shape for v in plain.state_dict().values()]


def test_build_student_and_teacher_from_a_space(tiny_space):
    tiny_space["model"]["width_mult"] = 0.5
    tiny_space["distill"]["teacher"]["width"] = 12
    sp = space_from_dict(tiny_space)
    student = build_student(sp.model, num_classes=10, in_channels=1)
    direct = build_model("mobilenetv2", num_classes=10, in_channels=1, width_mult=0.5)
    assert [v.shape for v in student.state_dict().values()] == [v.shape for v in direct.state_dict().values()]
    teacher = build_teacher(sp.distill.teacher, num_classes=10, in_channels=1)
    assert teacher.features[0].out_channels == 12
    assert teacher(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_unknown_family():
    with pytest.raises(KeyError, match="unknown model family 'vgg'"):
        build_model("vgg", num_classes=10, in_channels=1)


def test_registry_refuses_a_second_family_of_the_same_name(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    @register_family("test-tiny", fields={"width_mult"})
    def tiny(*, num_classes, in_channels, width_mult=1.0):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert "test-tiny" in registry.student_families()
    assert family_fields("test-tiny") == frozenset({"width_mult"})
    with pytest.raises(ValueError, match="already registered"):
        register_family("test-tiny", fields=set())(tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_family("mobilenetv2", fields=set())(tiny)


def test_teacher_families():
    assert "resnet" in registry.teacher_families()
    assert "mobilenetv2" not in registry.teacher_families()
    assert {"mobilenetv2", "resnet"} <= set(registry.student_families())


@pytest.mark.parametrize("value,divisor,expected", [(4, 4, 4), (1, 4, 4), (6, 4, 8), (16 * 0.25, 4, 4), (24 * 0.5, 4, 12),
                                                    (90, 8, 88), (10, 8, 16)])
def test_make_divisible(value, divisor, expected):
    got = make_divisible(value, divisor)
    assert got == expected
    assert got % divisor == 0 and got >= 0.9 * value


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_relu6_trains_exactly_as_torchs_in_place_relu6(layout):
    """autokd's ReLU6 (in place, backward from the output) computes torch's relu6_ bitwise: values, the input
    gradient and the gradients of the layer before it, edges 0 and 6, NaN and infinities included; outside autograd
    it is the library op, and it is an nn.ReLU6."""
    from autokd.models.layers import ReLU6

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, 5, 5, generator=gen) * 5
    x.view(-1)[:6] = torch.tensor([0.0, -0.0, 6.0, float("nan"), float("inf"), -float("inf")])
    x = x.contiguous(memory_format=layout)
    grad = torch.randn(x.shape, generator=gen)
    outs = []
    for act in (nn.ReLU6(inplace=True), ReLU6()):
        scale = torch.ones(6, 1, 1, requires_grad=True)
        leaf = x.clone().requires_grad_(True)
        y = act(leaf * scale)
        y.backward(grad)
        outs.append((y.detach(), leaf.grad, scale.grad))
    for a, b in zip(*outs):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.signbit(a), torch.signbit(b))
    assert isinstance(ReLU6(), nn.ReLU6) and repr(ReLU6()) == repr(nn.ReLU6(inplace=True))
    with torch.no_grad():
        assert torch.equal(ReLU6()(x.clone()).nan_to_num(), torch.nn.functional.relu6(x).nan_to_num())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_a_mobilenet_with_autokds_relu6_can_be_scripted():
    # TorchScript compiles every branch its forward shares a condition with; the training path must stay out of it
    from autokd.space import ModelSpec

    model = build_student(ModelSpec(family="mobilenetv2", width_mult=0.25), num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(torch.jit.script(model)(x), model(x))
