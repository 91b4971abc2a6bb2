"""A trial's costs are known before it trains: :func:`autokd.objective.planned_costs` on an untrained copy equals
what the trained (and pruned by its own criterion, and quantized) model measures. Early stopping relies on it."""

from __future__ import annotations

import copy

import pytest
import torch

from autokd.data import load_dataset
from autokd.objective import planned_costs, run_config
from autokd.sampling import TrialConfig
from autokd.space import resolve, space_from_dict


@pytest.mark.parametrize("method,ratio,bits,width", [("l1", 0.5, 32, 0.5), ("taylor", 0.25, 4, 0.25),
                                                     ("bn_scale", 0.5, 8, 0.5), ("random", 0.0, 2, 0.25)])
def test_planned_costs_equal_the_trained_models(tiny_space_data, method, ratio, bits, width):
    s = copy.deepcopy(tiny_space_data)
    s["distill"]["kd"] = False
    s["search"]["kd_twins"] = False
    s["model"]["width_mult"] = width
    s["compress"] = {"prune_ratio": ratio, "prune_method": method, "bits": bits, "finetune_epochs": 1}
    sp = space_from_dict(s)
    data = load_dataset(sp.dataset)
    cfg = TrialConfig(resolve(sp, {}), {})
    before = planned_costs(cfg, data)
    torch.set_num_threads(1)
    after = run_config(cfg, data).metrics
    assert {k: after[k] for k in before} == before


def test_planned_costs_leave_the_global_random_stream_alone(tiny_space_data):
    """Early stopping asks for the costs mid-training, where dropout draws from the global stream."""
    s = copy.deepcopy(tiny_space_data)
    s["distill"]["kd"] = False
    s["search"]["kd_twins"] = False
    s["model"]["width_mult"] = 0.5
    s["compress"] = {"prune_ratio": 0.5, "bits": 4, "finetune_epochs": 1}
    sp = space_from_dict(s)
    data = load_dataset(sp.dataset)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    planned_costs(TrialConfig(resolve(sp, {}), {}), data)
    assert torch.equal(torch.get_rng_state(), before)
