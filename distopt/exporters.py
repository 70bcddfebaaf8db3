"""Exporters as plug-ins: every deployable format a ``.dopt`` file can be written to, by name.

An exporter says what it needs installed (:meth:`Exporter.require`), writes the bytes of one
decoded artifact (:meth:`Exporter.export`), checks them on the real runtime against the decoded
PyTorch model (:meth:`Exporter.verify`), and names its manifest columns. ``distopt export
--format NAME`` and :func:`export_front` work for any registered exporter; the ONNX exporter is
the first (:mod:`distopt.export` builds its graph). A new format (C source, TensorFlow Lite
Micro, the third) is one more registered class, with no edit to the CLI or the manifest code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distopt import jsonio
from distopt import metrics as M
from distopt.compress import Decoded, decode
from distopt.config import bits_text, load_config
from distopt.data import load_splits
from distopt.c_parity import c_compiler, c_parity
from distopt.c_source import c_source
from distopt.export import OPSET, ExportError, parity, to_onnx
from distopt.runtime import require_onnx
from distopt.tflite_parity import tflm_parity
from distopt.tflite_source import require_tflite, tflite_bytes

__all__ = ["CExporter", "EXPORTERS", "Exporter", "OnnxExporter", "TfliteExporter",
           "export_front", "headers", "register_exporter", "table"]


class Exporter:
    """The protocol: one format, by ``name`` (the ``--format`` value and the manifest key)."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # the file name's suffix, with the dot
    headers: ClassVar[list[str]]  # table columns after the five every export has
    checked_headers: ClassVar[list[str]]  # ... and those only a verified export has

    def require(self, verify: bool) -> None:
        """Raise ImportError naming what to install, if the format (or, with ``verify``, its
        runtime) is not installed here."""

    def export(self, decoded: Decoded, source: str) -> bytes:
        raise NotImplementedError

    def info(self, data: bytes) -> dict[str, Any]:
        """What the manifest records of an exported file besides its path and bytes."""
        return {}

    def verify(self, decoded: Decoded, data: bytes, x: np.ndarray, y: np.ndarray
               ) -> dict[str, Any]:
        """The exported file run on its runtime against the decoded PyTorch model on ``(x,
        y)``: accuracies, agreement, latencies (manifest fields)."""
        raise NotImplementedError

    def cells(self, info: dict[str, Any], verified: bool) -> list[str]:
        raise NotImplementedError


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    if exporter.name in EXPORTERS:
        raise ValueError(f"an exporter named {exporter.name!r} is registered already")
    EXPORTERS[exporter.name] = exporter
    return exporter


def _quality(info: dict[str, Any], runtime: str) -> str:
    """A runtime's test accuracy, with its ROC AUC beside it for a two-class model."""
    acc = f"{info[f'test_accuracy_{runtime}']:.4f}"
    auc = info.get(f"test_auc_{runtime}")
    return f"{acc} (AUC {auc:.4f})" if isinstance(auc, float) else acc


class OnnxExporter(Exporter):
    """ONNX (QDQ int8 weights behind per-channel ``DequantizeLinear``), checked on ONNX
    Runtime."""

    name, suffix = "onnx", ".onnx"
    headers = [".onnx bytes"]
    checked_headers = ["PyTorch acc", "ORT acc", "agreement", "PyTorch ms", "ORT ms"]

    def require(self, verify: bool) -> None:
        require_onnx(runtime=verify)

    def export(self, decoded: Decoded, source: str) -> bytes:
        return to_onnx(decoded, source)

    def info(self, data: bytes) -> dict[str, Any]:
        return {"opset": OPSET, M.ONNX_BYTES: len(data)}

    def verify(self, decoded: Decoded, data: bytes, x: np.ndarray, y: np.ndarray
               ) -> dict[str, Any]:
        return parity(decoded, data, x, y)

    def cells(self, info: dict[str, Any], verified: bool) -> list[str]:
        cells = [f"{info[M.ONNX_BYTES]:,}"]
        if verified:
            cells += [_quality(info, "pytorch"), _quality(info, "onnxruntime"),
                      f"{info['agreement']:.2%}",
                      f"{info[M.LATENCY_MS]:.3f}", f"{info[M.ORT_LATENCY_MS]:.3f}"]
        return cells


register_exporter(OnnxExporter())


class CExporter(Exporter):
    """One self-contained C99 file (:mod:`distopt.c_source`): weights packed in place as
    ``flash_bytes`` counts them, one activation arena of ``peak_ram_bytes``; checked by
    compiling it with this machine's C compiler and running it on test inputs."""

    name, suffix = "c", ".c"
    headers = [".c bytes"]
    checked_headers = ["flash (compiled)", "arena (compiled)", "PyTorch acc", "C acc",
                       "agreement", "max |logit diff|"]

    def require(self, verify: bool) -> None:
        if verify and c_compiler() is None:
            raise ImportError("checking the C export needs a C compiler (cc, gcc or clang): "
                              "apt install gcc, or export without the check (--no-verify)")

    def export(self, decoded: Decoded, source: str) -> bytes:
        return c_source(decoded, source).encode()

    def info(self, data: bytes) -> dict[str, Any]:
        return {"c_bytes": len(data)}

    def verify(self, decoded: Decoded, data: bytes, x: np.ndarray, y: np.ndarray
               ) -> dict[str, Any]:
        return c_parity(decoded, data, x, y)

    def cells(self, info: dict[str, Any], verified: bool) -> list[str]:
        cells = [f"{info['c_bytes']:,}"]
        if verified:
            cells += [f"{info[M.FLASH_BYTES]:,}", f"{info['arena_bytes']:,}",
                      f"{info['test_accuracy_pytorch']:.4f}", f"{info['test_accuracy_c']:.4f}",
                      f"{info['agreement']:.2%}", f"{info['max_abs_logit_diff']:.2e}"]
        return cells


register_exporter(CExporter())


class TfliteExporter(Exporter):
    """TensorFlow Lite (int8 spec) for integer models (:mod:`distopt.tflite_source`), checked
    on TensorFlow Lite Micro's interpreter (:mod:`distopt.tflite_parity`)."""

    name, suffix = "tflite", ".tflite"
    headers = [".tflite bytes"]
    checked_headers = ["TFLM arena (activations / total)", "reference acc", "TFLM acc",
                       "agreement", "max |logit diff|"]

    def require(self, verify: bool) -> None:
        require_tflite()

    def export(self, decoded: Decoded, source: str) -> bytes:
        return tflite_bytes(decoded, source)

    def info(self, data: bytes) -> dict[str, Any]:
        return {"tflite_bytes": len(data)}

    def verify(self, decoded: Decoded, data: bytes, x: np.ndarray, y: np.ndarray
               ) -> dict[str, Any]:
        return tflm_parity(decoded, data, x, y)

    def cells(self, info: dict[str, Any], verified: bool) -> list[str]:
        cells = [f"{info['tflite_bytes']:,}"]
        if verified:
            cells += [f"{info['tflm_arena_bytes']:,} / {info['tflm_arena_total_bytes']:,}",
                      f"{info['test_accuracy_pytorch']:.4f}",
                      f"{info['test_accuracy_tflm']:.4f}", f"{info['agreement']:.2%}",
                      f"{info['max_abs_logit_diff']:.0f}"]
        return cells


register_exporter(TfliteExporter())


def export_front(output: Path, exporter: Exporter, trial: str | None = None,
                 verify: bool = True) -> list[dict[str, Any]]:
    """Export the front of the search in ``output`` (or one ``trial`` of it) as
    ``<name>/<trial_id><suffix>``; with ``verify``, check each on its runtime against PyTorch
    on the whole test set. Records every file's path, bytes, the ``.dopt`` it came from (so a
    rebuilt report keeps the entry while that file holds) and the check under the exporter's
    name in the manifest's model entries, and returns those entries.

    Raises :class:`~distopt.export.ExportError` for a directory without a search's manifest
    or an unknown trial, before anything is exported, and for the one ``trial`` asked for
    that the format does not take. A front model the format does not take is recorded as
    refused (``{"refused": reason}``) and the others are exported."""
    path = output / M.MANIFEST_FILE
    if not path.exists():
        raise ExportError(f"{output}: no {M.MANIFEST_FILE}; is it a search's output (or run "
                          "`distopt report` on it first)?")
    manifest = json.loads(path.read_text())
    entries = manifest.get("models", [])
    if trial is not None:
        entries = [e for e in entries if e["trial_id"] == trial]
        if not entries:
            ids = ", ".join(e["trial_id"] for e in manifest.get("models", [])) or "none"
            raise ExportError(f"--trial: got {trial!r}; the front of {output} holds {ids}")
    splits = load_splits(load_config(output / "config.yaml").data) if verify and entries \
        else None
    (output / exporter.name).mkdir(exist_ok=True)
    for entry in entries:
        source = output / entry["file"]
        artifact = source.read_bytes()
        decoded = decode(artifact, str(source))
        try:
            data = exporter.export(decoded, str(source))
        except ExportError as e:
            if trial is not None:
                raise
            # A front can mix models a format takes and models it does not (integer and
            # float ones, with activation_bits searched): those are recorded as refused.
            entry[exporter.name] = {"refused": str(e).split(": ", 1)[-1]}
            continue
        target = output / exporter.name / f"{entry['trial_id']}{exporter.suffix}"
        target.write_bytes(data)
        info: dict[str, Any] = {"file": str(target.relative_to(output)), **exporter.info(data),
                                "source_sha256": hashlib.sha256(artifact).hexdigest()}
        if splits is not None:
            info.update(exporter.verify(decoded, data, splits.x_test, splits.y_test))
        entry[exporter.name] = info
    path.write_text(jsonio.dumps(manifest))
    return entries


def table(entries: list[dict[str, Any]], exporter: Exporter, verified: bool) -> list[list[str]]:
    """The export's rows (model, bits, sparsity, .dopt bytes, then the exporter's columns),
    for the CLI and the benchmarks, with :func:`headers`."""
    rows = []
    for e in entries:
        m = e["metrics"]
        info = e[exporter.name]
        cells = exporter.cells(info, verified) if "refused" not in info else \
            [f"not exported: {info['refused']}"] + [""] * (len(headers(exporter, verified)) - 5)
        rows.append([e["trial_id"], bits_text(e["config"]["compress"]),
                     f"{1 - m[M.NONZERO_PARAMS] / m[M.PARAMS]:.0%}", f"{int(m[M.SIZE_BYTES]):,}",
                     *cells])
    return rows


def headers(exporter: Exporter, verified: bool) -> list[str]:
    return ["model", "bits", "sparsity", ".dopt bytes", *exporter.headers,
            *(exporter.checked_headers if verified else [])]
