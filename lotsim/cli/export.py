"""``lotsim export``: a checkpoint -> ONNX or torch.export (.pt2) file, verified against PyTorch."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lotsim.cli._common import RUNTIME_ERROR, fail, print_json, stderr, stdout

FORMATS = ("onnx", "pt2")  # mirrors lotsim.export.FORMATS without importing torch at CLI start-up


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file or run folder (best.pt, else last.pt).",
                                               show_default=False)],
    format: Annotated[str | None, typer.Option("--format", "-f", help="onnx or pt2 (default: from the "
                                               "--output suffix, else onnx).", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: the "
                                                "checkpoint's name with .onnx / .pt2).", show_default=False)] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset, 18..23 (default: torch's, 20).",
                                              show_default=False)] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Maximum sequence length of the exported "
                                                "graph (default: the model's seq_len).", show_default=False)] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Run the exported file on several "
                                         "(batch, seq) shapes and compare with PyTorch.")] = True,
    tolerance: Annotated[float, typer.Option(help="Largest allowed max |exported - PyTorch| of the logits.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file and its sidecar JSON.")] = False,
    allow_code: Annotated[bool, typer.Option(help="Trust the checkpoint: read it even if it needs full unpickling "
                                             "(which can run code stored in it).")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """Export a trained model to [bold]ONNX[/bold] or [bold]torch.export[/bold] (.pt2) and verify it.

    The graph maps idx int64 \\[batch, seq] to logits \\[batch, seq, vocab] with dynamic batch and
    sequence axes up to the maximum length (lotsim.seq_len in the metadata: longer inputs are not
    supported); the model config, vocabulary and lotsim version travel in the file's metadata and
    in a sidecar FILE.json. Exits 1 if the exported model differs from PyTorch by more than
    --tolerance on any verified shape.
    """
    fmt = (format or (output.suffix.lstrip(".") if output is not None and output.suffix else "onnx")).lower()
    if fmt not in FORMATS:
        raise fail(f"--format {fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if seq_len is not None and seq_len < 1:
        raise fail(f"--seq-len {seq_len} must be >= 1")
    if not tolerance >= 0:
        raise fail(f"--tolerance {tolerance} must be >= 0")
    from lotsim.export import ExportFailed, check_dependencies, check_opset, export_checkpoint

    spinner = stderr.status("exporting", spinner="dots") if stderr.is_terminal else None

    def progress(message: str) -> None:
        if spinner is not None:
            spinner.update(escape(message))

    try:
        check_opset(opset)
        check_dependencies(fmt, verify)
        with spinner or contextlib.nullcontext():
            report = export_checkpoint(checkpoint, output, fmt, opset=opset, seq_len=seq_len, verify=verify,
                                       tolerance=tolerance, progress=progress, overwrite=overwrite,
                                       allow_code=allow_code)
    except (ValueError, FileNotFoundError) as err:  # user errors: bad file, option or missing extra
        raise fail(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    except ExportFailed as err:
        raise fail(str(err), RUNTIME_ERROR) from None
    if json_:
        print_json(report)
    else:
        _print_report(report)
    if not report["ok"]:
        worst = max(report["verification"], key=lambda v: float("inf") if v["max_abs_diff"] is None
                    else v["max_abs_diff"])
        detail = worst.get("error") or f"max abs diff {worst['max_abs_diff']:.3g} > tolerance {report['tolerance']:g}"
        raise fail(f"verification failed at (batch, seq) = {tuple(worst['shape'])}: {detail}; "
                   f"the file is kept: {report['output']}", RUNTIME_ERROR)


def _print_report(report: dict) -> None:
    from rich.table import Table

    size = report["bytes"] / 1024**2
    what = f"opset {report['opset']}, {report['graph_nodes']} nodes, " if report["format"] == "onnx" else ""
    stdout.print(f"wrote [bold]{escape(report['output'])}[/bold] ({report['format']}, {what}{size:.2f} MB, "
                 f"{report['attention']} attention, vocab {report['vocab_size']}, seq <= {report['seq_len']}) "
                 f"in {report['export_seconds']:.1f} s", highlight=False)
    if report["external_data"]:
        stdout.print(f"weights are in [bold]{escape(report['external_data'])}[/bold] (over 2 GB): keep it next to "
                     f"the model file", highlight=False)
    stdout.print(f"metadata: {escape(report['sidecar'])}", highlight=False)
    if not report["verified"]:
        stdout.print("not verified (--no-verify)")
        return
    engine = "onnxruntime (CPU)" if report["format"] == "onnx" else "torch.export.load"
    table = Table(title=f"{engine} vs PyTorch, tolerance {report['tolerance']:g}")
    table.add_column("batch", justify="right")
    table.add_column("seq", justify="right")
    table.add_column("max |diff|", justify="right")
    table.add_column("ok")
    for row in report["verification"]:
        diff = "error" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.2e}"
        table.add_row(str(row["shape"][0]), str(row["shape"][1]), diff,
                      "[green]yes[/green]" if row["ok"] else "[red]NO[/red]")
    stdout.print(table)
