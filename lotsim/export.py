"""Deployable models: ONNX (for onnxruntime) and ``torch.export`` programs (``.pt2``), verified
against PyTorch.

The exported graph maps ``idx`` int64 (batch, seq) to ``logits`` float32 (batch, seq, vocab), with
a dynamic batch axis and a dynamic sequence axis up to the exported maximum length (the model's
``seq_len`` unless asked for less). Every attention variant in the registry exports through the
same path: the model's forward is traced by ``torch.export`` (the ONNX exporter's front end too),
so the Kuramoto steps inside the lattice attention become a fixed, unrolled graph of ``n_steps``
integrator steps.

Entry points, in the order ``lotsim export`` uses them::

    read_checkpoint(path) -> CheckpointContents       # config, weights, recipe, vocabulary (lotsim.train.checkpoint)
    load_model_for_export(path) -> (model, config)    # the eval-mode LOTModel and its ModelConfig
    export_onnx(model, path, opset=..., seq_len=...)  # one self-contained .onnx (weights inside)
    export_pt2(model, path, seq_len=...)              # torch.export.save
    verify_export(model, path, format, shapes, tolerance) -> [{shape, max_abs_diff, ok}, ...]
    export_checkpoint(checkpoint, output, ...) -> report dict   # all of the above + sidecar JSON

Metadata travels with the file so a consumer needs neither lotsim nor torch: ONNX
``metadata_props`` (keys ``lotsim.*``, see :func:`export_metadata`), the same keys as
``lotsim.json`` inside a ``.pt2`` archive, and a sidecar ``<output>.json`` next to either. The
vocabulary is the one stored in the checkpoint: export never reads a file the checkpoint names.
``lotsim.seq_len`` is the exported graph's maximum sequence length: longer inputs are not
supported (some variants then fail inside onnxruntime, others run past the trained length
silently), so a consumer must check it, as ``examples/onnx_generate.py`` does.

Library code: no typer, no rich. User errors are :class:`ValueError` (one line); a failure of the
exporter itself is :class:`ExportFailed`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lotsim.model import LOTModel, ModelConfig
from lotsim.train.checkpoint import CheckpointContents, model_from_checkpoint, read_checkpoint

FORMATS = ("onnx", "pt2")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}
# torch's ONNX exporter implements its op library (torchlib) at opset 18: a lower request comes out
# as 18 anyway, so it is refused rather than silently changed; 23 is torch 2.13's maximum.
MIN_OPSET, MAX_OPSET = 18, 23
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with room for the graph
INPUT_NAME, OUTPUT_NAME = "idx", "logits"
METADATA_PREFIX = "lotsim."
ONNX_PACKAGES = ("onnx", "onnxscript")
VERIFY_PACKAGES = ("onnxruntime",)
INSTALL_HINT = "pip install 'lotsim[export]'"


class ExportFailed(RuntimeError):
    """The exporter (torch.export / ONNX translation / saving) failed on a valid model: one line."""


# -------------------------------------------------------------------------------------------------
# Optional dependencies


def require_packages(packages: Sequence[str], purpose: str) -> None:
    """Import each package or raise one ValueError naming the missing ones and the install line.

    Args:
        packages: module names, e.g. ``("onnx", "onnxscript")``.
        purpose: what needs them, for the message.

    Raises:
        ValueError: ``"<purpose> needs onnx, onnxscript (missing: onnxscript); install lotsim[export]: ..."``.
    """
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"{purpose} needs {', '.join(packages)} (missing: {', '.join(missing)}); "
                         f"install lotsim[export]: {INSTALL_HINT}")


def check_format(format: str) -> str:
    """``format`` lower-cased if it is one of :data:`FORMATS`; ValueError otherwise."""
    if not isinstance(format, str) or format.lower() not in FORMATS:
        raise ValueError(f"format {format!r} is not supported; allowed: {', '.join(FORMATS)}")
    return format.lower()


def check_opset(opset: int | None) -> int | None:
    """``opset`` if None or within [MIN_OPSET, MAX_OPSET]; ValueError otherwise."""
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported; allowed: {MIN_OPSET}..{MAX_OPSET} "
                         f"(torch's ONNX exporter emits opset >= {MIN_OPSET})")
    return opset


def check_dependencies(format: str, verify: bool = True) -> None:
    """Raise a one-line ValueError when the packages ``format`` (and verification) need are missing.

    ``pt2`` needs torch only; ``onnx`` needs onnx and onnxscript, plus onnxruntime to verify.
    """
    if check_format(format) == "onnx":
        require_packages(ONNX_PACKAGES + (VERIFY_PACKAGES if verify else ()),
                         "ONNX export" + (" and verification" if verify else ""))


# -------------------------------------------------------------------------------------------------
# Checkpoints


def load_model_for_export(checkpoint: str | Path) -> tuple[LOTModel, ModelConfig]:
    """(eval-mode model, its :class:`~lotsim.model.ModelConfig`) from a checkpoint file or run folder.

    See :func:`lotsim.train.checkpoint.read_checkpoint` for the layouts understood and the errors raised.
    """
    contents = read_checkpoint(checkpoint)
    return model_from_checkpoint(contents), contents.config


# -------------------------------------------------------------------------------------------------
# Export


class LogitsOnly(nn.Module):
    """The exported module: ``idx`` (b, t) int64 -> ``logits`` (b, t, v) of the wrapped model."""

    def __init__(self, model: LOTModel):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx).logits


def _max_length(model: LOTModel, seq_len: int | None) -> int:
    limit = model.config.seq_len
    if seq_len is None:
        return limit
    if not 1 <= seq_len <= limit:
        raise ValueError(f"seq_len {seq_len} is out of range; allowed: 1..{limit} (the model's seq_len)")
    return seq_len


def _example_and_dynamic_shapes(model: LOTModel, max_len: int) -> tuple[tuple[torch.Tensor], dict]:
    """Example input (2, max_len) and ``{"idx": {0: Dim batch, 1: Dim seq <= max_len}}``.

    A length-1 maximum cannot be a dynamic dimension (torch.export specialises sizes 0 and 1), so the
    sequence axis is then static.
    """
    batch = torch.export.Dim("batch", min=1)
    dims = {0: batch}
    if max_len >= 2:
        dims[1] = torch.export.Dim("seq", min=1, max=max_len)
    idx = torch.randint(0, model.config.vocab_size, (2, max_len), generator=torch.Generator().manual_seed(0))
    return (idx,), {"idx": dims}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, stderr dumps, log lines and warnings (restored afterwards)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export",
                                                     "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:  # torch also prints the traced graph to stderr when tracing fails: kept out of the one-line error
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _one_line(err: BaseException) -> str:
    """``Type: first line; second line`` (torch puts the guard that broke a dynamic axis on line 2)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {'; '.join(lines[:2])[:500]}"


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's distinct parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def export_onnx(model: LOTModel, path: str | Path, *, opset: int | None = None, seq_len: int | None = None,
                metadata: Mapping[str, str] | None = None, external_data: bool | None = None) -> Path:
    """Export ``model`` to one ONNX file: ``idx`` int64 [batch, seq] -> ``logits`` [batch, seq, vocab].

    Uses torch's dynamo exporter (``torch.export`` + onnxscript), dynamic ``batch`` and ``seq`` axes
    (``seq`` <= ``seq_len``), weights inside the file. Models whose weights exceed protobuf's 2 GB
    limit are written with external data (``<path>.data`` beside the file: move both together).

    Args:
        model: an :class:`~lotsim.model.LOTModel` (put in eval mode).
        path: output file.
        opset: ONNX opset in [MIN_OPSET, MAX_OPSET]; None -> torch's default (20).
        seq_len: maximum sequence length of the exported graph; None -> the model's ``seq_len``.
        metadata: extra ``metadata_props`` (string -> string), e.g. :func:`export_metadata`.
        external_data: force (True) or forbid (False) external weights; None -> only when > 2 GB.

    Returns:
        The path written.

    Raises:
        ValueError: bad opset/seq_len, or onnx/onnxscript missing (one line).
        ExportFailed: the exporter failed (one line).
    """
    check_opset(opset)
    require_packages(ONNX_PACKAGES, "ONNX export")
    path = Path(path)
    max_len = _max_length(model, seq_len)
    model.eval()
    args, dynamic_shapes = _example_and_dynamic_shapes(model, max_len)
    if external_data is None:
        external_data = parameter_bytes(model) > EXTERNAL_DATA_BYTES
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(LogitsOnly(model).eval(), args, None, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                        dynamic_shapes=dynamic_shapes, verbose=False)
            program.model.metadata_props.update({str(k): str(v) for k, v in (metadata or {}).items()})
            for node in program.model.graph.all_nodes():  # source paths of this machine: not shipped
                node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
            path.parent.mkdir(parents=True, exist_ok=True)
            program.save(str(path), external_data=external_data)
    except Exception as err:
        raise ExportFailed(f"ONNX export failed: {_one_line(err)}") from err
    return path


def export_pt2(model: LOTModel, path: str | Path, *, seq_len: int | None = None,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``model`` with ``torch.export`` and save the program (``torch.export.save``, ``.pt2``).

    Same signature as the ONNX graph (``idx`` -> logits, dynamic batch and seq <= ``seq_len``);
    ``metadata`` is stored as ``lotsim.json`` in the archive (read it back with
    ``torch.export.load(path, extra_files={"lotsim.json": ""})``).

    Raises:
        ValueError: bad seq_len.
        ExportFailed: torch.export failed (one line).
    """
    path = Path(path)
    max_len = _max_length(model, seq_len)
    model.eval()
    args, dynamic_shapes = _example_and_dynamic_shapes(model, max_len)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(LogitsOnly(model).eval(), args, dynamic_shapes=dynamic_shapes)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.export.save(program, str(path), extra_files={"lotsim.json": json.dumps(dict(metadata or {}))})
    except Exception as err:
        raise ExportFailed(f"torch.export failed: {_one_line(err)}") from err
    return path


# -------------------------------------------------------------------------------------------------
# Verification


def default_shapes(seq_len: int) -> list[tuple[int, int]]:
    """(batch, seq) shapes verified by default: (1, 1), (2, min(7, seq_len)), (3, seq_len)."""
    shapes = [(1, 1), (2, min(7, seq_len)), (3, seq_len)]
    return list(dict.fromkeys(shapes))


def run_exported(path: str | Path, format: str) -> Callable[[Any], Any]:
    """A callable ``idx (numpy int64 (b, t)) -> logits (numpy float32 (b, t, v))`` over the file.

    ONNX runs in onnxruntime's CPUExecutionProvider; pt2 is loaded with ``torch.export.load``.
    """
    if check_format(format) == "onnx":
        require_packages(VERIFY_PACKAGES, "ONNX verification")
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda idx: session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(idx, dtype=np.int64)})[0]
    with _quiet():
        module = torch.export.load(str(path)).module()

    def run(idx):
        with torch.no_grad():
            return module(torch.as_tensor(np.asarray(idx, dtype=np.int64))).numpy()

    return run


def verify_export(model: LOTModel, path: str | Path, format: str,
                  shapes: Sequence[tuple[int, int]] | None = None, tolerance: float = 1e-4,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Run the exported file on random token ids and compare with the PyTorch model.

    Args:
        model: the model that was exported (eval mode, CPU).
        path: the exported file.
        format: ``onnx`` or ``pt2``.
        shapes: (batch, seq) pairs; None -> :func:`default_shapes` of the model's seq_len.
        tolerance: the largest allowed max |exported - PyTorch| over the logits.
        seed: seed of the random inputs.

    Returns:
        One dict per shape: ``{"shape": [b, t], "max_abs_diff": float, "ok": bool}``; ``ok`` is
        False (and ``max_abs_diff`` NaN -> None) if the exported model fails on that shape, with the
        error under ``"error"``.
    """
    format = check_format(format)
    shapes = list(shapes) if shapes is not None else default_shapes(model.config.seq_len)
    try:
        run = run_exported(path, format)
    except ValueError:
        raise
    except Exception as err:
        raise ExportFailed(f"the exported file {str(path)!r} does not load: {_one_line(err)}") from err
    generator = torch.Generator().manual_seed(seed)
    results = []
    model.eval()
    for b, t in shapes:
        idx = torch.randint(0, model.config.vocab_size, (b, t), generator=generator)
        with torch.no_grad():
            expected = model(idx).logits.float().numpy()
        entry: dict[str, Any] = {"shape": [int(b), int(t)]}
        try:
            got = run(idx.numpy())
        except Exception as err:
            entry.update(max_abs_diff=None, ok=False, error=_one_line(err))
        else:
            if got.shape != expected.shape:
                entry.update(max_abs_diff=None, ok=False,
                             error=f"output shape {list(got.shape)} != {list(expected.shape)}")
            else:
                diff = float(abs(got.astype("float64") - expected).max())
                entry.update(max_abs_diff=diff, ok=bool(math.isfinite(diff) and diff <= tolerance))
        results.append(entry)
    return results


# -------------------------------------------------------------------------------------------------
# Metadata and the whole command


def export_metadata(config: ModelConfig, *, seq_len: int | None = None, recipe: str | None = None,
                    vocabulary: Mapping[str, Any] | None = None) -> dict[str, str]:
    """String -> string metadata stored with an exported model (ONNX ``metadata_props``).

    Keys: ``lotsim.version``, ``lotsim.attention``, ``lotsim.vocab_size``, ``lotsim.seq_len``
    (maximum sequence length of the exported graph: a consumer must not feed longer inputs),
    ``lotsim.model_config`` (JSON), ``lotsim.input`` / ``lotsim.output`` (names), and when known
    ``lotsim.vocabulary`` (JSON, see :meth:`lotsim.tasks.Task.vocabulary`) and ``lotsim.recipe``
    (resolved TOML).
    """
    from lotsim import __version__

    meta = {
        "version": __version__,
        "attention": config.attention,
        "vocab_size": str(config.vocab_size),
        "seq_len": str(seq_len or config.seq_len),
        "model_config": json.dumps(config.model_dump(mode="json"), sort_keys=True),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
    }
    if vocabulary is not None:
        meta["vocabulary"] = json.dumps(dict(vocabulary))
    if recipe is not None:
        meta["recipe"] = recipe
    return {METADATA_PREFIX + key: value for key, value in meta.items()}


def read_metadata(path: str | Path, format: str | None = None) -> dict[str, str]:
    """The ``lotsim.*`` metadata of an exported file (ONNX metadata_props or the pt2 ``lotsim.json``)."""
    path = Path(path)
    format = check_format(format or path.suffix.lstrip(".") or "onnx")
    if format == "onnx":
        require_packages(("onnx",), "reading ONNX metadata")
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}

    extra = {"lotsim.json": ""}
    with _quiet():
        torch.export.load(str(path), extra_files=extra)
    return json.loads(extra["lotsim.json"] or "{}")


def sidecar_path(output: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: the sidecar JSON written next to an export."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def export_checkpoint(checkpoint: str | Path, output: str | Path | None = None, format: str = "onnx", *,
                      opset: int | None = None, seq_len: int | None = None, verify: bool = True,
                      tolerance: float = 1e-4, shapes: Sequence[tuple[int, int]] | None = None,
                      progress: Callable[[str], None] | None = None, overwrite: bool = False,
                      allow_code: bool = False) -> dict[str, Any]:
    """``lotsim export``: checkpoint -> exported file (+ sidecar JSON), verified against PyTorch.

    Args:
        checkpoint: checkpoint file or run folder (see :func:`read_checkpoint`).
        output: output file; None -> the checkpoint's path with the format's suffix.
        format: ``onnx`` or ``pt2``.
        opset: ONNX opset (ignored for pt2).
        seq_len: maximum (and example) sequence length; None -> the model's seq_len.
        verify: run the exported file on several (batch, seq) shapes and compare with PyTorch.
        tolerance: largest allowed max abs difference of the logits.
        shapes: verification shapes; None -> :func:`default_shapes`.
        progress: called with a short description as each stage starts (for a spinner).
        overwrite: replace an existing output file and its sidecar (otherwise refused).
        allow_code: read a checkpoint that needs full unpickling (only for a file you trust).

    Returns:
        A JSON-able report: ``output``, ``format``, ``sidecar``, ``external_data`` (path or None),
        ``bytes``, ``attention``, ``vocab_size``, ``seq_len``, ``opset``, ``graph_nodes`` (ONNX),
        ``export_seconds``, ``verify_seconds``, ``verification`` (list, see :func:`verify_export`),
        ``max_abs_diff``, ``tolerance``, ``ok`` (False when verification exceeded the tolerance).

    Raises:
        FileNotFoundError, ValueError: user errors (one line).
        ExportFailed: the exporter failed.
    """
    format = check_format(format)
    check_opset(opset)
    check_dependencies(format, verify)
    say = progress or (lambda _message: None)
    say(f"reading {checkpoint}")
    contents = read_checkpoint(checkpoint, allow_code=allow_code)
    model = model_from_checkpoint(contents)
    max_len = _max_length(model, seq_len)
    output = Path(output) if output is not None else contents.path.with_suffix(SUFFIXES[format])
    existing = [str(p) for p in (output, sidecar_path(output)) if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]!r} already exists; replace it with --overwrite or choose another --output")
    metadata = export_metadata(contents.config, seq_len=max_len, recipe=contents.recipe,
                               vocabulary=contents.vocabulary)
    say(f"exporting {contents.config.attention} model to {format}")
    start = time.perf_counter()
    if format == "onnx":
        external = parameter_bytes(model) > EXTERNAL_DATA_BYTES
        export_onnx(model, output, opset=opset, seq_len=max_len, metadata=metadata, external_data=external)
    else:
        external = False
        export_pt2(model, output, seq_len=max_len, metadata=metadata)
    export_seconds = time.perf_counter() - start
    report: dict[str, Any] = {
        "checkpoint": str(contents.path), "output": str(output), "format": format,
        "external_data": str(output.with_name(output.name + ".data")) if external else None,
        "bytes": output.stat().st_size, "attention": contents.config.attention,
        "vocab_size": contents.config.vocab_size, "seq_len": max_len, "opset": None, "graph_nodes": None,
        "export_seconds": round(export_seconds, 3),
    }
    if format == "onnx":
        report.update(_onnx_summary(output))
    verification: list[dict[str, Any]] = []
    verify_seconds = None
    if verify:
        say(f"verifying {output.name} against PyTorch")
        start = time.perf_counter()
        verification = verify_export(model, output, format,
                                     shapes if shapes is not None else default_shapes(max_len), tolerance)
        verify_seconds = round(time.perf_counter() - start, 3)
    diffs = [v["max_abs_diff"] for v in verification if v["max_abs_diff"] is not None]
    report.update(verified=verify, verification=verification, tolerance=tolerance,
                  max_abs_diff=max(diffs) if diffs else None, verify_seconds=verify_seconds,
                  ok=all(v["ok"] for v in verification))
    sidecar = sidecar_path(output)
    sidecar.write_text(json.dumps(_sidecar(contents, report, metadata), indent=2) + "\n")
    report["sidecar"] = str(sidecar)
    return report


def _onnx_summary(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "graph_nodes": len(model.graph.node)}


def _sidecar(contents: CheckpointContents, report: Mapping[str, Any], metadata: Mapping[str, str]) -> dict:
    config = contents.config
    return {
        "file": Path(report["output"]).name,
        "format": report["format"],
        "lotsim_version": metadata[METADATA_PREFIX + "version"],
        "attention": config.attention,
        "vocab_size": config.vocab_size,
        "seq_len": report["seq_len"],
        "input": {"name": INPUT_NAME, "dtype": "int64", "shape": ["batch", "seq"]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", "seq", config.vocab_size]},
        "vocabulary": contents.vocabulary,
        "model_config": config.model_dump(mode="json"),
        "recipe": contents.recipe,
        "checkpoint_step": contents.step,
        "opset": report["opset"],
        "external_data": report["external_data"],
        "verification": report["verification"],
        "tolerance": report["tolerance"],
    }


__all__ = [
    "EXTERNAL_DATA_BYTES",
    "FORMATS",
    "INPUT_NAME",
    "MAX_OPSET",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "CheckpointContents",
    "ExportFailed",
    "check_dependencies",
    "check_format",
    "check_opset",
    "default_shapes",
    "export_checkpoint",
    "export_metadata",
    "export_onnx",
    "export_pt2",
    "load_model_for_export",
    "parameter_bytes",
    "read_checkpoint",
    "read_metadata",
    "run_exported",
    "sidecar_path",
    "verify_export",
]
