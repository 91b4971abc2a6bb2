"""Trial models saved as data (state_dict + layer table) rebuild exactly, pruned and quantized, without pickled code."""

from __future__ import annotations

import pickle

import pytest
import torch

from autokd.compress import prune_model, quantize_model
from autokd.models import build_model
from autokd.models.saved import LegacyModelFile, architecture, layer_table, model_bytes, read_model


def _trained_like(family: str, arch: dict, *, ratio: float, bits: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(family, num_classes=10, in_channels=1, **arch)
    x = torch.randn(8, 1, 16, 16)
    if ratio:
        model = prune_model(model, ratio=ratio, method="l1", example_input=x[:1])
    if bits != 32:
        model = quantize_model(model, bits=bits)
    model.train()
    with torch.no_grad():  # a few forwards: BatchNorm statistics and activation ranges become state
        for _ in range(3):
            model(x)
    return model.eval()


CASES = [
    ("mobilenetv2", {"width_mult": 0.5}, 0.0, 32),
    ("mobilenetv2", {"width_mult": 0.5}, 0.5, 32),
    ("mobilenetv2", {"width_mult": 0.5}, 0.3, 4),
    ("resnet", {"width": 8, "depth": 1}, 0.5, 2),
]


@pytest.mark.parametrize("family,arch,ratio,bits", CASES)
def test_a_pruned_quantized_model_rebuilds_exactly(family, arch, ratio, bits):
    model = _trained_like(family, arch, ratio=ratio, bits=bits)
    blob = model_bytes(model, arch=architecture(model, family=family, arch=arch, num_classes=10, in_channels=1),
                       record={"number": 3, "metrics": {"val_accuracy": 0.5}})
    rebuilt, record = read_model(blob)
    assert record == {"format": 2, "number": 3, "metrics": {"val_accuracy": 0.5}}
    assert layer_table(rebuilt) == layer_table(model)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    if ratio:  # the rebuilt model has the pruned shapes, not the family's
        fresh = build_model(family, num_classes=10, in_channels=1, **arch)
        assert layer_table(fresh) != layer_table(rebuilt)


def test_the_file_holds_no_code(tmp_path):
    model = _trained_like("mobilenetv2", {"width_mult": 0.5}, ratio=0.3, bits=4)
    path = tmp_path / "m.pt"
    path.write_bytes(model_bytes(model, arch=architecture(model, family="mobilenetv2", arch={"width_mult": 0.5},
                                                          num_classes=10, in_channels=1), record={}))
    # weights_only loading would refuse any class reference: the file is tensors and plain data only
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"format", "architecture", "state_dict"}
    read_model(path)


def test_an_old_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "number": 0, "model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(LegacyModelFile, match="trust_pickle=True"):
        read_model(path)
    model, record = read_model(path, trust_pickle=True)
    assert isinstance(model, torch.nn.Linear) and record["number"] == 0


def test_a_malicious_pickle_is_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": 2, "x": Boom()}, protocol=2))
    with pytest.raises(LegacyModelFile):
        read_model(path)
    assert not (tmp_path / "pwned").exists()
