"""``autokd export``: write a trial's trained model as ONNX, TorchScript or a state_dict, with a JSON sidecar,
each checked on the spot (agreement with the PyTorch model on the test split, latency per image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from autokd.cli import app
from autokd.cli.common import StudySpaceArg, StorageOpt, StudyOpt, open_study
from autokd.errors import AutokdError, Problem


def _kind(side: dict[str, Any]) -> str:
    """"float", "int8 Q/DQ" (ONNX) / "8-bit", or "simulated W4A4 + W8A8": the bit widths of the layers."""
    layers = side["quantization"]["layers"].values()
    if not layers:
        return "float"
    counts: dict[str, int] = {}
    for p in layers:
        key = f"W{p['w_bits']}A{p['a_bits']}"
        counts[key] = counts.get(key, 0) + 1
    widths = " + ".join(sorted(counts, key=lambda k: -counts[k]))
    if side["simulated"]:
        return f"simulated {widths}"
    return f"int8 Q/DQ {widths}" if side["format"] == "onnx" else widths


def _line(side: dict[str, Any], file: Path) -> str:
    c = side["check"]
    threads = f"{c['threads']} thread{'s' if c['threads'] != 1 else ''}"
    ok = "[green]ok[/]" if c["passed"] else "[bold red]FAILED[/]"
    return (f"trial {side['trial']:>3}: {file} [dim]({_kind(side)})[/] agreement {c['agreement']:.1%} of "
            f"{c['images']} test images {ok}, max |Δlogit| {c['max_abs_diff']:.2g}, latency "
            f"[bold]{c['latency_ms']:.3f} ms[/]/image ({c['runtime']}, batch 1, {threads}, median of {c['runs']})")


def _table(done: list[Any], fmt: str) -> Table:
    table = Table(title=f"Exported ({fmt}): checked on the test split", title_justify="left")
    for col, just in (("trial", "right"), ("file", "left"), ("kind", "left"), ("test acc %", "right"),
                      ("agree %", "right"), ("ms/image", "right")):
        table.add_column(col, justify=just)
    for e in done:
        s, c = e.sidecar, e.sidecar["check"]
        acc = s["model_metrics"].get("test_accuracy")
        table.add_row(str(e.number), e.file.name, _kind(s), "-" if acc is None else f"{100 * acc:.1f}",
                      f"{100 * c['agreement']:.2f}", f"{c['latency_ms']:.3f}",
                      style=None if c["passed"] else "red")
    return table


@app.command()
def export(
    space: StudySpaceArg = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    trial: Optional[int] = typer.Option(None, "--trial", metavar="N", min=0, help="Export trial number N."),
    pareto: bool = typer.Option(False, "--pareto", help="Export every trial of the Pareto front (into -o DIR)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", metavar="FILE|DIR",
                                          help="Where to write: a FILE with --trial, a folder with --pareto (files "
                                               "trial-N.onnx, trial-N.torchscript.pt, trial-N.state_dict.pt); "
                                               "each gets a sidecar FILE.json.", show_default=False),
    format_: str = typer.Option("onnx", "--format", metavar="onnx|torchscript|state_dict",
                                help="onnx (checked with onnxruntime: the export extra), torchscript (torch.jit) "
                                     "or state_dict (rebuilt from the sidecar to check it)."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", metavar="DIR",
                                             help="The artifact store folder of the trial models (default: the one "
                                                  "the search recorded on the study)."),
    runs: int = typer.Option(100, "--runs", min=50, max=100000, metavar="N",
                             help="Timed runs of the latency (batch 1; the median is reported)."),
    threads: int = typer.Option(1, "--threads", min=1, max=1024, metavar="T",
                                help="Intra-op threads of the runtime for the check and the latency."),
    json_: bool = typer.Option(False, "--json", help="Print the sidecars as one JSON list (for scripts)."),
) -> None:
    """Write the trained model of trial N (or of every Pareto trial) of the study of SPACE as ONNX, TorchScript or
    a state_dict, with a JSON sidecar (settings, metrics, what rebuilds it), and check each file on the spot:
    its predictions on the test split must agree with the PyTorch model's on >= 99.5% of images; prints the
    latency per image on this machine. 8-bit layers become ONNX QuantizeLinear/DequantizeLinear; below 8 bits
    the model is 'simulated' in float (dequantized weights, Round/Clip activations)."""
    from autokd.export import export_one, load, output_paths, require_runtime, select_trials

    if (trial is None) == (not pareto):
        raise AutokdError(Problem("give either --trial N (one model, -o FILE) or --pareto (every Pareto trial, "
                                  "-o DIR)", file="--trial" if trial is not None else "--pareto"))
    if output is None:
        raise AutokdError(Problem(f"say where to write: -o {'DIR' if pareto else 'FILE'}", file="-o"))
    require_runtime(format_)
    st, sp = open_study(space, storage, study, command="export")
    chosen = select_trials(st, trial=trial, pareto=pareto)
    paths = output_paths([t.number for t in chosen], format_, output, pareto=pareto)

    from autokd.data import load_dataset

    data = load_dataset(sp.dataset).to("cpu")
    console = Console(stderr=json_)
    done = []
    for t in chosen:
        tm = load(st, t, artifacts=artifacts)
        e = export_one(tm, format_, paths[t.number], study=st.study_name, data=data, runs=runs, threads=threads,
                       value_names=st.metric_names)
        done.append(e)
        console.print(_line(e.sidecar, e.file), soft_wrap=True, highlight=False)
    if json_:
        from autokd.export import sidecar

        # the same cleaning as the files (NaN/inf -> null): a NaN cannot fail here, after the files are written
        typer.echo(json.dumps(sidecar.clean([e.sidecar for e in done]), indent=2, allow_nan=False, default=str))
    else:
        console.print(_table(done, format_))
    failed = [e for e in done if not e.passed]
    if failed:
        err = Console(stderr=True)
        for e in failed:
            c = e.sidecar["check"]
            err.print(f"[bold red]error:[/] [red]trial {e.number}: {e.file} agrees with the PyTorch model on only "
                      f"{c['agreement']:.2%} of {c['images']} test images (needs >= {c['min_agreement']:.1%})[/]",
                      soft_wrap=True, highlight=False)
        raise typer.Exit(1)
