"""Tests for autokd.compress.prune: channels are physically removed through torch-pruning's dependency graph,
the cost drops as the issue requires, and the pruned model is still a working, trainable model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autokd.compress import NNI_PRUNE_METHODS, PRUNE_METHODS, prune_model
from autokd.measure import count_params, flops
from autokd.models import build_model
from autokd.train import Optim, fit

SHAPE = (1, 16, 16)
ARCHS = {
    "depthwise": ("mobilenetv2", dict(width_mult=0.5, stages="small", conv="depthwise")),
    "standard": ("mobilenetv2", dict(width_mult=0.5, stages="small", conv="standard")),
    "resnet": ("resnet", dict(width=8)),
}


def tiny(arch: str = "depthwise", seed: int = 0) -> nn.Module:
    family, kwargs = ARCHS[arch]
    torch.manual_seed(seed)
    return build_model(family, num_classes=10, in_channels=1, **kwargs)


def toy_data(n: int = 192, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 10-class task: a fixed random prototype per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, *SHAPE, generator=g)
    y = torch.arange(n) % 10
    return protos[y] + 0.5 * torch.randn(n, *SHAPE, generator=g), y


def example() -> torch.Tensor:
    return torch.randn(1, *SHAPE)


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# ----------------------------------------------------------------------------------------------------------------
# Cost and structure


@pytest.mark.parametrize("arch", list(ARCHS))
def test_half_pruning_meets_the_cost_targets_and_keeps_the_output(arch):
    dense, pruned = tiny(arch), tiny(arch)
    out = prune_model(pruned, ratio=0.5, method="l1", example_input=example())
    assert out is pruned
    assert flops(pruned, SHAPE) <= 0.45 * flops(dense, SHAPE)
    assert count_params(pruned) <= 0.5 * count_params(dense)
    # The classifier keeps its classes; the model runs and gives one row of 10 logits per image.
    assert pruned.classifier.out_features == 10
    assert pruned(torch.randn(3, *SHAPE)).shape == (3, 10)
    # Channels really are gone: the widest conv is narrower than before.
    assert max(c.out_channels for c in convs(pruned)) < max(c.out_channels for c in convs(dense))


@pytest.mark.parametrize("arch", ["depthwise", "standard", "resnet"])
def test_pruned_model_still_trains(arch):
    x, y = toy_data()
    model = prune_model(tiny(arch), ratio=0.5, method="l2", example_input=example())
    losses = fit(model, x, y, Optim(epochs=4, lr=0.05, batch_size=32), seed=0)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]


def test_depthwise_convs_stay_depthwise():
    model = tiny("depthwise")
    depthwise_before = sum(1 for c in convs(model) if c.groups > 1)
    prune_model(model, ratio=0.5, method="l1", example_input=example())
    depthwise = [c for c in convs(model) if c.groups > 1]
    assert len(depthwise) == depthwise_before > 0
    for c in depthwise:  # groups, in and out channels shrink together
        assert c.groups == c.in_channels == c.out_channels
        assert c.weight.shape[1] == 1


def test_residual_blocks_keep_matching_channels():
    # Blocks with a residual add (stride 1, cin == cout) must keep input and output channel counts equal.
    model = tiny("depthwise")
    prune_model(model, ratio=0.5, method="l1", example_input=example())
    residual = [b for b in model.features if getattr(b, "use_residual", False)]
    assert residual
    for block in residual:
        first, last = convs(block)[0], convs(block)[-1]
        assert first.in_channels == last.out_channels
    # ResNet: body and shortcut of every block end at the same width.
    res = tiny("resnet")
    prune_model(res, ratio=0.5, method="l1", example_input=example())
    for block in res.features[3:]:
        assert convs(block.body)[-1].out_channels == (
            convs(block.shortcut)[-1].out_channels if convs(block.shortcut) else block.body[0].in_channels)


def _has_nni() -> bool:
    import importlib.util

    return importlib.util.find_spec("nni") is not None


# NNI's criteria need the optional backend (the dev extra, which CI installs, has it)
METHODS = [pytest.param(m, marks=pytest.mark.skipif(not _has_nni(), reason='needs pip install "autokd[nni]"'))
           if m in NNI_PRUNE_METHODS else m for m in PRUNE_METHODS]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_prunes(method):
    x, y = toy_data(64)
    dense, model = tiny(), tiny()
    prune_model(model, ratio=0.5, method=method, example_input=example(), calibration=(x, y))
    assert flops(model, SHAPE) <= 0.45 * flops(dense, SHAPE)
    assert model(x[:2]).shape == (2, 10)
    assert all(p.grad is None for p in model.parameters())  # Taylor's gradients are not left behind


def test_larger_ratio_prunes_more():
    costs = [flops(prune_model(tiny(), ratio=r, example_input=example()), SHAPE) for r in (0.25, 0.5, 0.75)]
    assert costs[0] > costs[1] > costs[2]


class _DwResidual(nn.Module):
    """stem -> depthwise -> pointwise, added back to the stem output: all 8 channels form one coupled group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 10)

    def forward(self, x):
        s = self.stem(x)
        return self.classifier((s + self.pw(self.dw(s))).mean((2, 3)))


def dead_channel_model() -> nn.Module:
    """A :class:`_DwResidual` (one coupled group through a depthwise conv and a residual add, 8 channels) whose
    channels 0, 2, 3, 6 are dead everywhere they appear: zero weights in and out, zero BatchNorm affine (random
    running statistics elsewhere). Removing exactly those leaves the function unchanged; in eval mode."""
    torch.manual_seed(0)
    model = _DwResidual()
    dead = torch.tensor([0, 2, 3, 6])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[dead] = 0
                m.bias[dead] = 0
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        model.stem[0].weight[dead] = 0
        model.dw[0].weight[dead] = 0
        model.pw[0].weight[dead] = 0
        model.pw[0].weight[:, dead] = 0
        model.classifier.weight[:, dead] = 0
    return model.eval()


def test_removing_dead_channels_keeps_the_function_exactly():
    # Half of the channels are dead everywhere they appear (zero weights in and out, zero BN affine). Removing them
    # through the depthwise conv and the residual add must leave the model's function unchanged; a wrong index
    # mapping anywhere in the group would change it.
    model = dead_channel_model()
    x = torch.randn(4, *SHAPE)
    before = model(x)
    prune_model(model, ratio=0.5, method="l1", example_input=example())
    assert model.stem[0].out_channels == model.dw[0].groups == model.pw[0].out_channels == 4
    assert model.classifier.in_features == 4
    assert torch.allclose(model(x), before, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Rankings: the methods keep what they claim to keep


def _stem_keeps(model: nn.Module, marked: torch.Tensor, method: str, **kw) -> None:
    prune_model(model, ratio=0.5, method=method, example_input=example(), **kw)
    stem_bn = model.features[0][1]
    assert len(stem_bn.weight) == len(marked)
    # The kept stem channels are exactly the marked ones (compare by their distinctive values).
    assert torch.allclose(stem_bn.weight.detach().abs().sort().values, marked.sort().values)


def test_l1_keeps_the_largest_weights():
    model = tiny()
    stem_conv, stem_bn = model.features[0][0], model.features[0][1]
    n = stem_conv.out_channels
    keep = torch.arange(n) % 2 == 1
    with torch.no_grad():
        stem_conv.weight[keep] *= 1000.0  # dominates the group's summed magnitude
        stem_bn.weight.copy_(torch.linspace(0.5, 1.5, n))
    _stem_keeps(model, stem_bn.weight.detach()[keep].clone(), "l1")


def test_bn_scale_keeps_the_largest_gammas():
    model = tiny()
    block_bn = model.features[1].block[0][1]  # the depthwise conv's BN shares the stem's channels
    stem_bn = model.features[0][1]
    n = stem_bn.num_features
    keep = torch.arange(n) < n // 2
    with torch.no_grad():
        gammas = torch.where(keep, torch.linspace(5.0, 6.0, n), torch.linspace(0.01, 0.02, n))
        stem_bn.weight.copy_(gammas)
        block_bn.weight.copy_(gammas)
        model.features[0][0].weight[~keep] *= 1000.0  # a magnitude ranking would choose the others
    _stem_keeps(model, gammas[keep].clone(), "bn_scale")


def test_random_is_reproducible_under_the_trial_seed():
    def widths(seed: int) -> list[float]:
        model = tiny()
        torch.manual_seed(seed)
        prune_model(model, ratio=0.5, method="random", example_input=example())
        return model.features[0][0].weight.detach().flatten(1).sum(1).tolist()  # the stem filters kept

    assert widths(1) == widths(1)
    assert widths(1) != widths(2)


# ----------------------------------------------------------------------------------------------------------------
# Contract


def test_ratio_zero_returns_the_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prune_model(model, ratio=0.0, method="taylor", example_input=example(),
                       calibration=toy_data(16)) is model
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("training", [True, False])
def test_mode_and_batchnorm_statistics_are_kept(training):
    model = tiny()
    model.train(training)
    stem_bn = model.features[0][1]
    means = torch.linspace(-1, 1, stem_bn.num_features)
    with torch.no_grad():
        stem_bn.running_mean.copy_(means)
    x, y = toy_data(32)
    prune_model(model, ratio=0.5, method="taylor", example_input=100 * example(), calibration=(x, y))
    assert model.training is training
    # Tracing and the Taylor batch run in eval mode: the kept running means are a subset of the old ones.
    kept = stem_bn.running_mean
    assert len(kept) == len(means) // 2
    assert all(torch.isclose(means, v).any() for v in kept)


def test_round_to_rounds_channel_counts():
    rounded = prune_model(tiny(), ratio=0.3, example_input=example(), round_to=4)
    plain = prune_model(tiny(), ratio=0.3, example_input=example(), round_to=1)
    assert all(c.out_channels % 4 == 0 for c in convs(rounded))
    assert any(c.out_channels % 4 for c in convs(plain))  # so the check above can fail


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=1.0), "ratio"),
    (dict(ratio=-0.1), "ratio"),
    (dict(ratio=True), "ratio"),
    (dict(ratio=0.5, method="l3"), "unknown pruning method"),
    (dict(ratio=0.5, round_to=0), "round_to"),
    (dict(ratio=0.5, method="taylor"), "calibration"),
    (dict(ratio=0.0, method="taylor"), "calibration"),  # validated even when nothing would be pruned
    (dict(ratio=0.5, method="taylor", calibration=(torch.zeros(2, *SHAPE), torch.zeros(3))), "equal length"),
])
def test_invalid_arguments_are_rejected_before_anything_changes(kwargs, match):
    model = tiny()
    n = count_params(model)
    with pytest.raises(ValueError, match=match):
        prune_model(model, example_input=example(), **kwargs)
    assert count_params(model) == n


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        prune_model(tiny(), 0.5, "l1", example())  # type: ignore[misc]
