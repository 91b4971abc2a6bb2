"""Every KD method trains a pruned (0.5), 4-bit (QAT) student that exports like its KD-off sibling: the same
state_dict keys, the same ONNX graph (node count and ops), and onnxruntime agreeing with PyTorch on >= 99.5% of the
test images. Logit methods add nothing to the student; this pins it for every method the schema offers."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from autokd.distill import KD_METHODS
from autokd.export import formats, graph, verify
from autokd.objective import run_config
from autokd.sampling import sample

@pytest.fixture(scope="module")
def trained(compressed, with_method):
    space, data, inputs = compressed
    out = {"off": run_config(sample(space, optuna.trial.FixedTrial({"distill.kd": False})), inputs)}
    for method in KD_METHODS:
        out[method] = run_config(sample(with_method(method), optuna.trial.FixedTrial({"distill.kd": True})), inputs)
    return out, data


@pytest.mark.parametrize("method", sorted(KD_METHODS))
def test_each_method_exports_like_its_kd_off_sibling(trained, method):
    outcomes, data = trained
    off, on = outcomes["off"].model.eval(), outcomes[method].model.eval()
    assert on.state_dict().keys() == off.state_dict().keys()
    assert all(on.state_dict()[k].shape == off.state_dict()[k].shape for k in off.state_dict())
    x = data.test_x[:1].cpu()
    graphs = {}
    for name, model in (("off", off), ("on", on)):
        module, _ = graph.prepare(model, "onnx")
        graphs[name] = formats.onnx_bytes(module, x)
    import onnx

    # The graph's computing nodes, in order. Identity nodes are left out: the exporter writes one for each constant
    # equal to another it already holds (deduplicated initializers, e.g. two layers' equal quantization scales), so
    # their number follows the trained values, not the architecture (seen: 265 / 266 / 267 nodes for dist /
    # logit_std / KD-off, differing only in Identity).
    ops = {k: [n.op_type for n in onnx.load_from_string(v).graph.node if n.op_type != "Identity"]
           for k, v in graphs.items()}
    assert len(ops["on"]) == len(ops["off"]) and ops["on"] == ops["off"]
    xs = data.test_x.cpu()
    got = verify.onnx_session(graphs["on"], threads=1).run(None, {"input": xs.numpy()})[0].argmax(1)
    with torch.no_grad():
        want = on(xs).argmax(1).numpy()
    assert np.mean(got == want) >= 0.995
    assert outcomes[method].metrics["bitops"] == outcomes["off"].metrics["bitops"]  # costs: the student's alone
    assert outcomes[method].metrics["size_bytes"] == outcomes["off"].metrics["size_bytes"]
