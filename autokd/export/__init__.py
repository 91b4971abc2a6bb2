"""``autokd export``: a trial's trained model as ONNX, TorchScript or a state_dict, with a JSON sidecar, checked
on the spot (agreement with the PyTorch model on the test split, latency per image) -- by concern:

- :mod:`~autokd.export.trials`: which trials (one number, or the Pareto front) and their models from the store;
- :mod:`~autokd.export.graph`: export-friendly stand-ins for fake-quantized layers (ONNX Q/DQ at 8 bits, float
  Round/Clip below);
- :mod:`~autokd.export.formats`: the files as bytes (ONNX, TorchScript, state_dict);
- :mod:`~autokd.export.verify`: agreement and latency, with onnxruntime or torch;
- :mod:`~autokd.export.sidecar`: the JSON sidecar (settings, metrics, what rebuilds the model);
- :mod:`~autokd.export.run`: one export end to end.
"""

from autokd.export.formats import FORMATS, SUFFIXES
from autokd.export.graph import LayerPlan, is_simulated, prepare
from autokd.export.run import Exported, export_one, output_paths, rebuild_from_sidecar, require_runtime, sidecar_path
from autokd.export.trials import TrialModel, load, pareto_trials, select_trials
from autokd.export.verify import MIN_AGREEMENT, MIN_RUNS, Check

__all__ = ["FORMATS", "MIN_AGREEMENT", "MIN_RUNS", "SUFFIXES", "Check", "Exported", "LayerPlan", "TrialModel",
           "export_one", "is_simulated", "load", "output_paths", "pareto_trials", "prepare", "rebuild_from_sidecar",
           "require_runtime", "select_trials", "sidecar_path"]
