"""Spaces that used to validate and then fail or silently train nothing are refused by ``validate`` (or, for
momentum 0, trained correctly)."""

from __future__ import annotations

import pytest
import torch

from autokd.train import Optim, fit, make_optimizer


@pytest.mark.parametrize("override, field, words", [
    ("train.batch_size=1", "train.batch_size", "greater than or equal to 2"),
    ("model.kernel_size={low: 3, high: 7}", "model.kernel_size", "can produce 4, 6 (valid: 1, 3, 5, 7, ...)"),
    ("compress.bits={low: 2, high: 32}", "compress.bits", "can produce 9, 10, 11, 12, ... (valid: 2-8, or 32"),
    ("compress.bits={choices: [4, 12]}", "compress.bits", "12 is not a supported bit width"),
    ("model.stages=huge", "model.stages", "'huge' is not valid (valid: small, cifar)"),
])
def test_a_space_that_cannot_train_is_refused_with_one_located_line(cli, space_file, tiny_space, override, field,
                                                                    words):
    res = cli("validate", space_file(tiny_space), "--set", override)
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith(f"error: --set {override}: {field}: ") and words in line, line
    assert "Traceback" not in res.err


@pytest.mark.parametrize("override", ["model.kernel_size={low: 3, high: 7, step: 2}", "compress.bits={low: 2, high: 8}",
                                      "model.stages=cifar", "train.batch_size=2", "train.momentum=0"])
def test_valid_neighbours_are_accepted(cli, space_file, tiny_space, override):
    assert cli("validate", space_file(tiny_space), "--set", override).code == 0


def test_momentum_zero_trains_plain_sgd():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    opt = Optim(epochs=2, lr=0.1, momentum=0.0, batch_size=4)
    group = make_optimizer(model, opt).param_groups[0]
    assert group["nesterov"] is False and group["momentum"] == 0.0
    assert make_optimizer(model, Optim(epochs=1, lr=0.1)).param_groups[0]["nesterov"] is True
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, x, y, opt, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained
