"""One export end to end: trial model -> file + JSON sidecar -> checked on the test split (agreement, latency)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autokd.errors import AutokdError, Problem
from autokd.export import formats, graph, sidecar, verify
from autokd.export.trials import TrialModel
from autokd.progress import ProgressCallback, silent

MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".json")


@dataclass
class Exported:
    """One written model: its file, its sidecar (with ``check``) and whether the check passed."""

    number: int
    file: Path
    sidecar_file: Path
    sidecar: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.sidecar["check"]["passed"])


def sidecar_path(file: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (beside it; never the name of another format's file)."""
    return file.with_name(file.name + ".json")


def require_runtime(fmt: str) -> None:
    """ONNX needs the ``export`` extra (onnx to inspect, onnxruntime to check): one ``--format`` line if absent."""
    if fmt not in formats.FORMATS:
        raise AutokdError(Problem(f"unknown format {fmt!r} (valid: {', '.join(formats.FORMATS)})", file="--format"))
    if fmt != "onnx":
        return
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise AutokdError(Problem(f"--format onnx needs {module}, which is not installed: "
                                      'pip install "autokd[export]"', file="--format")) from None


def output_paths(numbers: list[int], fmt: str, out: Path, *, pareto: bool) -> dict[int, Path]:
    """Where each trial's model goes: ``--pareto``: ``DIR/trial-N<suffix>``; one trial: ``FILE`` (or
    ``DIR/trial-N<suffix>`` when ``-o`` is an existing folder or ends with a slash). The folder is created and
    proven writable (else one ``-o`` line)."""
    from autokd.study import ensure_writable

    text = str(out)
    as_dir = pareto or out.is_dir() or text.endswith(("/", os.sep))
    if pareto:
        if out.exists() and not out.is_dir():
            raise AutokdError(Problem(f"{out} is a file: --pareto writes one file per Pareto trial into a folder "
                                      "(-o DIR)", file="-o"))
        if not out.exists() and out.suffix.lower() in MODEL_SUFFIXES:
            raise AutokdError(Problem(f"{out} looks like a file name: --pareto writes one file per Pareto trial "
                                      "into a folder (-o DIR; use --trial N -o FILE for one model)", file="-o"))
    elif not as_dir:
        if out.suffix.lower() == ".json":
            raise AutokdError(Problem(f"{out}: a .json name is the sidecar's; name the model file "
                                      f"(e.g. model{formats.SUFFIXES[fmt]})", file="-o"))
    folder = out if as_dir else (out.parent if str(out.parent) else Path("."))
    ensure_writable(folder, "-o")
    if as_dir:
        return {n: folder / f"trial-{n}{formats.SUFFIXES[fmt]}" for n in numbers}
    return {numbers[0]: out}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place (a failed write leaves nothing)."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary file, not the result
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise AutokdError(Problem(f"cannot write {path}: {exc.strerror or type(exc).__name__}", file="-o")) from None


def _settings(tm: TrialModel) -> dict[str, Any]:
    return dict(tm.record.get("settings") or tm.trial.user_attrs.get("settings") or {})


def export_one(tm: TrialModel, fmt: str, path: Path, *, study: str, data: Any, runs: int = 100, threads: int = 1,
               progress: ProgressCallback = silent, value_names: list[str] | None = None) -> Exported:
    """Write trial ``tm``'s model as ``fmt`` to ``path`` with its sidecar, check it, and return what was done.

    ``data`` are the space's splits (:func:`autokd.data.load_dataset`): the test split is what agreement is
    measured on; the reference is the PyTorch trial model itself (its eval forward). ``value_names``: the study's
    names of the objective values (``Study.metric_names``: ``log10_bitops`` for costs told on the log10 scale)."""
    model = tm.model
    settings = _settings(tm)
    try:
        arch = sidecar.rebuild_info(model, settings, num_classes=data.num_classes, in_channels=data.in_channels)
    except ValueError as exc:
        raise AutokdError(Problem(f"trial {tm.number}: {exc}", file="--trial")) from None
    test_x = data.test_x.detach().float().cpu()
    example = test_x[:1]
    progress("export.start", number=tm.number, file=str(path), format=fmt)
    with verify.torch_threads(threads):
        reference = verify.torch_logits(model, test_x)
    extra: dict[str, Any] = {}
    try:
        if fmt == "state_dict":
            plans = graph.layer_plans(model)
            blob = formats.state_dict_bytes(model)
            extra["rebuild"] = ("autokd.models.saved.rebuild(sidecar['architecture'], "
                                "torch.load(file, weights_only=True))")
        else:
            module, plans = graph.prepare(model, fmt)
            if fmt == "onnx":
                blob = formats.onnx_bytes(module, example)
                extra["onnx"] = formats.onnx_summary(blob)
            else:
                blob = None  # written below, with the sidecar inside the archive
    except graph.ExportError as exc:
        raise AutokdError(Problem(f"trial {tm.number}: {exc}", file="--format")) from None
    side = sidecar.build(fmt=fmt, file=path.name, study=study, trial=tm.trial, settings=settings, arch=arch,
                         plans=plans, input_shape=tuple(test_x.shape[1:]),
                         preprocessing=data.preprocessing() if hasattr(data, "preprocessing") else None, extra=extra,
                         value_names=value_names)
    if fmt == "torchscript":
        blob = formats.torchscript_bytes(module, example, extra={"autokd.json": sidecar.dumps(side)})
    side_path = sidecar_path(path)
    write_atomic(path, blob)
    write_atomic(side_path, sidecar.dumps(side))
    check = _check(fmt, path, side_path, reference, test_x, runs=runs, threads=threads)
    side = sidecar.with_check(side, check.as_dict())
    write_atomic(side_path, sidecar.dumps(side))
    progress("export.done", number=tm.number, file=str(path), sidecar=str(side_path), check=side["check"],
             simulated=side["simulated"])
    return Exported(tm.number, path, side_path, side)


def _check(fmt: str, path: Path, side_path: Path, reference: Any, test_x: torch.Tensor, *,
           runs: int, threads: int) -> verify.Check:
    """The written file, read back from disk, against the PyTorch model's logits."""
    if fmt == "onnx":
        return verify.check_onnx(path.read_bytes(), reference, test_x, runs=runs, threads=threads)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            loaded = torch.jit.load(str(path), map_location="cpu")
        return verify.check_torch(loaded, reference, test_x, runs=runs, threads=threads,
                                  runtime=f"torch {torch.__version__} (torch.jit)")
    return verify.check_torch(rebuild_from_sidecar(path, side_path), reference, test_x, runs=runs,
                              threads=threads, runtime=f"torch {torch.__version__} (rebuilt from the sidecar)")


def rebuild_from_sidecar(path: Path, side_path: Path) -> nn.Module:
    """The model a ``state_dict`` export describes: the sidecar's architecture with the file's weights."""
    from autokd.models.saved import rebuild

    arch = json.loads(side_path.read_text())["architecture"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    return rebuild(arch, state)
