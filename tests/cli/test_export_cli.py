"""``autokd export`` end to end: tiny searches (a float, a pruned, an 8-bit, a 4-bit and an 8-bit LSQ model), exported
as ONNX, TorchScript and state_dict, each checked on the test split; and every refusal as one located line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
import torch
import yaml

# study name -> its fixed settings (every study: one trial, digits at 8 px, KD off, one epoch + one fine-tune epoch)
STUDIES = {
    "float": ["compress.bits=32", "compress.prune_ratio=0.0"],
    "pruned": ["compress.bits=32", "compress.prune_ratio=0.5", "train.repeats=2"],
    "q8": ["compress.bits=8", "compress.prune_ratio=0.0"],
    "q4": ["compress.bits=4", "compress.prune_ratio=0.0", "compress.keep_first_last=false"],
    "lsq8": ["compress.bits=8", "compress.prune_ratio=0.0", "compress.quantizer=lsq"],
}
COMMON = ["distill.kd=false", "model.width_mult=0.25", "train.epochs=1", "compress.finetune_epochs=1",
          "search.n_trials=1"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory, main_runner, tiny_space_data):
    """One-trial studies (:data:`STUDIES`) in one SQLite file: (folder, storage URL)."""
    folder = tmp_path_factory.mktemp("export")
    (folder / "space.yaml").write_text(yaml.safe_dump(tiny_space_data, sort_keys=False))
    url = f"sqlite:///{folder}/x.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("COLUMNS", "1000")
        mp.setenv("NO_COLOR", "1")
        for name, sets in STUDIES.items():
            args = ["search", "space.yaml", "--storage", url, "--study", name, "--device", "cpu"]
            for s in COMMON + sets:
                args += ["--set", s]
            res = main_runner(*args)
            assert res.code == 0, res.err
    return folder, url


@pytest.fixture
def export(studies, cli, monkeypatch):
    """``export(study, *args)``: run ``autokd export space.yaml --storage URL --study NAME --runs 50 ...`` in the
    studies' folder."""
    folder, url = studies
    monkeypatch.chdir(folder)

    def run(name: str, *args):
        return cli("export", "space.yaml", "--storage", url, "--study", name, "--runs", "50", *args)

    return run


def _trial(url: str, name: str) -> optuna.trial.FrozenTrial:
    (t,) = optuna.load_study(study_name=name, storage=url).get_trials()
    return t


def _sidecar(path: Path) -> dict:
    return json.loads(Path(f"{path}.json").read_text())


def _onnx_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_pareto_onnx_export_writes_one_checked_file_per_pareto_trial(export, tmp_path):
    res = export("q8", "--pareto", "--format", "onnx", "-o", tmp_path / "out")
    assert res.code == 0, res.err
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["trial-0.onnx", "trial-0.onnx.json"]
    assert "agreement 100.0% of" in res.out and "ms/image (onnxruntime" in res.out and "median of 50" in res.out
    side = _sidecar(files[0])
    assert side["check"]["passed"] and side["check"]["agreement"] >= 0.995 and side["check"]["runs"] == 50
    assert side["check"]["latency_ms"] > 0 and side["check"]["threads"] == 1
    assert side["simulated"] is False and side["format"] == "onnx" and side["file"] == "trial-0.onnx"
    # 8-bit layers as real Q/DQ: int8 weights (DequantizeLinear), uint8 activations (QuantizeLinear/DequantizeLinear)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _onnx_ops(files[0])
    layers = side["quantization"]["layers"]
    assert layers and all(p["weights"] == "int8" and p["activations"] == "uint8" for p in layers.values())
    assert side["onnx"]["integer_weights"] == {"int8": len(layers)}
    rows = side["architecture"]["layers"].values()
    assert all(row.get("w_bits") == 8 for row in rows if row["type"] != "batchnorm2d")


def test_onnx_of_a_float_model_matches_torch_and_has_no_qdq(export, studies, tmp_path):
    import onnxruntime as ort

    from autokd.data import load_dataset
    from autokd.space import load_space
    from autokd.study import load_trial_model

    folder, url = studies
    res = export("float", "--trial", "0", "-o", tmp_path / "m.onnx")
    assert res.code == 0, res.err
    assert not {"QuantizeLinear", "DequantizeLinear", "Round"} & _onnx_ops(tmp_path / "m.onnx")
    side = _sidecar(tmp_path / "m.onnx")
    assert side["simulated"] is False and side["quantization"]["layers"] == {}
    # the values are labelled: a new study tells its cost on the log10 scale, the metrics keep the raw count
    first, cost = side["value_names"]
    assert first == "val_accuracy" and cost.startswith("log10_")
    assert side["values"][1] == pytest.approx(math.log10(side["metrics"][cost.removeprefix("log10_")]))
    # the file, run by onnxruntime, gives the trial model's logits on the space's test split
    model, _ = load_trial_model(_trial(url, "float"), study=optuna.load_study(study_name="float", storage=url))
    data = load_dataset(load_space(folder / "space.yaml").dataset)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": data.test_x.numpy()})[0]
    with torch.no_grad():
        want = model(data.test_x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert side["check"]["images"] == len(data.test_y)


def test_four_bit_onnx_is_simulated_without_qdq(export, tmp_path):
    res = export("q4", "--trial", "0", "-o", tmp_path / "q4.onnx")
    assert res.code == 0, res.err
    ops = _onnx_ops(tmp_path / "q4.onnx")
    assert not {"QuantizeLinear", "DequantizeLinear"} & ops and {"Round", "Clip"} <= ops
    side = _sidecar(tmp_path / "q4.onnx")
    assert side["simulated"] is True and side["check"]["passed"]
    assert all(p["weights"] == "dequantized" and p["activations"] == "round_clip"
               for p in side["quantization"]["layers"].values())
    assert "simulated W4A4" in res.out


def test_pruned_model_with_repeats_state_dict_rebuilds_from_the_sidecar(export, studies, tmp_path):
    from autokd.export import rebuild_from_sidecar
    from autokd.study import load_trial_model

    _, url = studies
    res = export("pruned", "--trial", "0", "--format", "state_dict", "-o", tmp_path / "p.pt")
    assert res.code == 0, res.err
    side = _sidecar(tmp_path / "p.pt")
    assert "rebuilt from the sidecar" in side["check"]["runtime"] and side["check"]["agreement"] == 1.0
    # repeats: the file holds repeat 0's model; the sidecar gives its metrics beside the mean
    t = _trial(url, "pruned")
    assert side["repeats"] == 2 and side["model_repeat"] == 0
    assert side["model_metrics"] == t.user_attrs["metrics"]["repeats"][0]
    assert side["metrics"]["test_accuracy"] == pytest.approx(np.mean(
        [r["test_accuracy"] for r in t.user_attrs["metrics"]["repeats"]]))
    assert "repeats" not in side["metrics"]
    # per-layer channel counts after pruning: fewer than the family builds
    model, _ = load_trial_model(t, study=optuna.load_study(study_name="pruned", storage=url))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for name, m in convs.items():
        assert side["architecture"]["layers"][name]["out"] == m.out_channels
    rebuilt = rebuild_from_sidecar(tmp_path / "p.pt", tmp_path / "p.pt.json")
    assert sum(p.numel() for p in rebuilt.parameters()) == t.user_attrs["metrics"]["params"]
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_the_exported_file_holds_repeat_0s_weights_not_repeat_1s(export, studies, tmp_path):
    """The file's model is repeat 0's: on the test split it scores repeat 0's recorded accuracy, and it is not the
    model that repeat 1 trains (retrained here from the trial's settings, checked against repeat 1's record)."""
    from autokd.data import load_dataset
    from autokd.export import rebuild_from_sidecar
    from autokd.measure import accuracy
    from autokd.objective import run_config
    from autokd.sampling import TrialConfig, resolve
    from autokd.space import load_space

    folder, url = studies
    res = export("pruned", "--trial", "0", "--format", "state_dict", "-o", tmp_path / "p.pt")
    assert res.code == 0, res.err
    side = _sidecar(tmp_path / "p.pt")
    repeats = _trial(url, "pruned").user_attrs["metrics"]["repeats"]
    assert side["repeat_metrics"] == repeats and len(repeats) == 2
    sp = load_space(folder / "space.yaml", overrides=COMMON + STUDIES["pruned"])
    data = load_dataset(sp.dataset)
    rebuilt = rebuild_from_sidecar(tmp_path / "p.pt", tmp_path / "p.pt.json").eval()
    acc = accuracy(rebuilt, data.test_x, data.test_y)
    assert acc == side["model_metrics"]["test_accuracy"] == repeats[0]["test_accuracy"]
    if repeats[1]["test_accuracy"] != repeats[0]["test_accuracy"]:
        assert acc != repeats[1]["test_accuracy"]
    # whatever the accuracies: repeat 1's model, trained again, is another model than the file's
    t = _trial(url, "pruned")
    one = run_config(TrialConfig(resolve(sp, t.params), t.params), data, repeat=1).model.eval()
    assert accuracy(one, data.test_x, data.test_y) == repeats[1]["test_accuracy"]  # the same run as the search's
    with torch.no_grad():
        assert not torch.allclose(rebuilt(data.test_x), one(data.test_x), atol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_of_the_8_bit_model(export, studies, tmp_path):
    res = export("q8", "--trial", "0", "--format", "torchscript", "-o", tmp_path)  # an existing folder
    assert res.code == 0, res.err
    path = tmp_path / "trial-0.torchscript.pt"
    side = _sidecar(path)
    assert side["check"]["passed"] and "torch.jit" in side["check"]["runtime"]
    extra = {"autokd.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["autokd.json"])["trial"] == 0  # the sidecar travels inside the archive too
    assert loaded(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_json_output_is_the_sidecars(export, tmp_path):
    res = export("float", "--pareto", "--format", "torchscript", "-o", tmp_path / "d", "--json")
    assert res.code == 0, res.err
    (side,) = json.loads(res.out)
    assert side["trial"] == 0 and side["check"]["passed"] and side["format"] == "torchscript"


def _strict(text: str):
    """JSON that must be strict: NaN/Infinity are refused."""
    def refuse(name):
        raise ValueError(f"{name} in the output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_writes_a_nan_as_null_as_the_files_do(export, monkeypatch, tmp_path):
    import autokd.export.verify as verify

    monkeypatch.setattr(verify, "median_latency_ms", lambda *a, **k: float("nan"))  # a latency nobody could time
    res = export("float", "--trial", "0", "--format", "state_dict", "-o", tmp_path / "m.pt", "--json")
    assert res.code == 0, res.err
    (side,) = _strict(res.out)
    assert side["check"]["latency_ms"] is None and side["check"]["passed"]
    assert _strict(Path(f"{tmp_path / 'm.pt'}.json").read_text())["check"]["latency_ms"] is None


def test_the_sidecar_says_how_to_turn_raw_images_into_the_input(export, studies, tmp_path):
    """Only the ONNX file and its sidecar: the raw digits (0..16) through the sidecar's recipe are the test split
    the search measured, and the file's predictions on them are the trial model's."""
    import onnxruntime as ort
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from autokd.data import load_dataset
    from autokd.space import load_space

    folder, _ = studies
    res = export("float", "--trial", "0", "-o", tmp_path / "m.onnx")
    assert res.code == 0, res.err
    section = _sidecar(tmp_path / "m.onnx")["input"]
    pre = section["preprocessing"]
    assert section["layout"] == "NCHW" and section["dtype"] == "float32" and section["shape"] == [1, 1, 8, 8]
    assert pre["formula"].startswith("x = (raw / 16 - mean[c]) / std[c]") and pre["resize"] is None
    assert pre["raw"].startswith("sklearn.datasets.load_digits().images")
    ds = section["dataset"]
    d = load_digits()
    _, test = train_test_split(np.arange(len(d.target)), test_size=ds["test_fraction"], random_state=ds["split_seed"],
                               stratify=d.target)
    x = torch.as_tensor(d.images[test][:, None], dtype=torch.float32) / pre["pixel_max"]
    if pre["resize"]:  # not at 8 px; as a reader would apply it
        r = pre["resize"]
        x = F.interpolate(x, size=tuple(r["to"]), mode=r["mode"], align_corners=r["align_corners"],
                          antialias=r["antialias"])
    x = (x - torch.tensor(pre["mean"]).view(1, -1, 1, 1)) / torch.tensor(pre["std"]).view(1, -1, 1, 1)
    data = load_dataset(load_space(folder / "space.yaml").dataset)
    torch.testing.assert_close(x, data.test_x, atol=1e-6, rtol=0)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"input": x.numpy()})[0].argmax(1)
    acc = _sidecar(tmp_path / "m.onnx")["model_metrics"]["test_accuracy"]  # a float32 mean: to 1e-6
    assert np.mean(labels == d.target[test]) == pytest.approx(acc, abs=1e-6)


def test_an_lsq_model_exports_as_onnx_with_qdq_pairs(export, studies, tmp_path):
    _, url = studies
    assert _trial(url, "lsq8").user_attrs["settings"]["compress"]["quantizer"] == "lsq"
    res = export("lsq8", "--trial", "0", "-o", tmp_path / "lsq.onnx")
    assert res.code == 0, res.err
    side = _sidecar(tmp_path / "lsq.onnx")
    assert side["check"]["passed"] and side["check"]["agreement"] >= 0.995 and side["simulated"] is False
    assert side["settings"]["compress"]["quantizer"] == "lsq"
    assert {"QuantizeLinear", "DequantizeLinear"} <= _onnx_ops(tmp_path / "lsq.onnx")
    layers = side["quantization"]["layers"]
    assert layers and all(p["w_bits"] == p["a_bits"] == 8 and p["weights"] in ("int8", "uint8")
                          and p["activations"] in ("int8", "uint8") for p in layers.values())
    assert sum(side["onnx"]["integer_weights"].values()) == len(layers)
    assert side["check"]["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("args, where, words", [
    (["--trial", "7", "-o", "m.onnx"], "--trial", "no trial 7 in study 'q8' (trials: 0; with a model: 0)"),
    (["--trial", "0", "--pareto", "-o", "d"], "--trial", "give either --trial N"),
    (["-o", "d"], "--pareto", "give either --trial N"),
    (["--trial", "0"], "-o", "say where to write"),
    (["--trial", "0", "-o", "m.onnx", "--format", "tflite"], "--format", "unknown format 'tflite'"),
    (["--pareto", "-o", "space.yaml"], "-o", "is a file: --pareto writes one file per Pareto trial"),
    (["--pareto", "-o", "new.onnx"], "-o", "looks like a file name"),
    (["--trial", "0", "-o", "space.yaml/m.onnx"], "-o", "cannot write to space.yaml"),
    (["--trial", "0", "-o", "m.json"], "-o", "the sidecar's"),
])
def test_bad_requests_exit_2_with_one_located_line(export, args, where, words):
    res = export("q8", *args)
    assert res.code == 2, res.out + res.err
    assert len(res.error_lines) == 1 and len(res.err_lines) == 1, res.err
    assert res.error_lines[0].startswith(f"error: {where}: ") and words in res.error_lines[0], res.err
    assert "Traceback" not in res.err


def test_a_trial_without_a_model_exits_2(studies, cli, tmp_path):
    folder, url = studies
    shutil.copy(folder / "x.db", tmp_path / "y.db")
    other = f"sqlite:///{tmp_path}/y.db"
    st = optuna.load_study(study_name="q8", storage=other)
    st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                           user_attrs={"fail_reason": "ValueError: boom"}))
    res = cli("export", "--storage", other, "--study", "q8", "--trial", "1", "-o", tmp_path / "m.onnx")
    assert res.code == 2 and res.error_lines == [
        "error: --trial: trial 1 is FAIL (ValueError: boom): it has no trained model"], res.err
    # a COMPLETE trial whose search kept no model
    st.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[0.5, 1.0]))
    res = cli("export", "--storage", other, "--study", "q8", "--trial", "2", "-o", tmp_path / "m.onnx")
    assert res.code == 2 and "trial 2 has no saved model" in res.error_lines[0], res.err
    # the model's artifact gone from the store
    store = Path(optuna.load_study(study_name="q8", storage=url).user_attrs["autokd.artifacts"])
    res = cli("export", "--storage", other, "--study", "q8", "--trial", "0", "-o", tmp_path / "m.onnx",
              "--artifacts", tmp_path / "empty")
    assert res.code == 2 and res.error_lines[0].startswith("error: --artifacts: trial 0's model"), res.err
    assert store.is_dir()


def test_without_onnxruntime_says_what_to_install(export, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    res = export("q8", "--trial", "0", "-o", tmp_path / "m.onnx")
    assert res.code == 2 and res.error_lines == [
        'error: --format: --format onnx needs onnxruntime, which is not installed: pip install "autokd[export]"']
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_check_exits_1_and_says_so(export, monkeypatch, tmp_path):
    import autokd.export.verify as verify

    monkeypatch.setattr(verify, "MIN_AGREEMENT", 1.01)  # no model can pass
    res = export("float", "--trial", "0", "--format", "state_dict", "-o", tmp_path / "m.pt")
    assert res.code == 1
    assert "error: trial 0: " in res.err and "agrees with the PyTorch model on only 100.00%" in res.err
    assert _sidecar(tmp_path / "m.pt")["check"]["passed"] is False
