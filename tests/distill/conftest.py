"""Shared by the distillation tests: a small space that prunes (0.5) and quantizes (4 bits) on 300 digits at 8 px,
and its prepared inputs (the teacher trained once per test process)."""

from __future__ import annotations

import pytest
import torch

COMPRESSED_SPACE = {"version": 1, "name": "methods-compress",
                    "dataset": {"name": "digits", "image_size": 8, "limit": 300},
                    "model": {"family": "mobilenetv2", "width_mult": 0.5},
                    "distill": {"kd": {"choices": [True, False]},
                                "teacher": {"family": "resnet", "width": 8, "epochs": 2}},
                    "train": {"epochs": 1},
                    "compress": {"prune_ratio": 0.5, "bits": 4, "finetune_epochs": 1},
                    "search": {"n_trials": 2}}


@pytest.fixture(scope="session")
def with_method():
    """``with_method(method, **distill)``: :data:`COMPRESSED_SPACE` with ``distill.method`` (and other
    ``distill`` fields) set."""
    from autokd.space import space_from_dict

    def build(method: str, **distill):
        return space_from_dict({**COMPRESSED_SPACE,
                                "distill": {**COMPRESSED_SPACE["distill"], "method": method, **distill}})
    return build


@pytest.fixture(scope="session")
def compressed(tmp_path_factory):
    """(space, data, inputs) of :data:`COMPRESSED_SPACE`."""
    from autokd.data import load_dataset
    from autokd.objective import prepare_inputs
    from autokd.space import space_from_dict
    from autokd.teacher import get_teacher

    torch.manual_seed(0)
    space = space_from_dict(COMPRESSED_SPACE)
    data = load_dataset(space.dataset)
    teacher = get_teacher(space, data, cache_dir=tmp_path_factory.mktemp("cache"))
    return space, data, prepare_inputs(space, data, teacher=teacher)
