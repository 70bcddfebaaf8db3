"""ONNX Runtime against PyTorch for a search's front: `distopt export` on finished searches,
one table row per front model (bits, sparsity, .dopt and .onnx bytes, test accuracy in both
runtimes, identical predictions, batch-1 one-thread latency in both, measured side by side).

    python benchmarks/onnx_parity.py                      # runs the default search and the
                                                          # signals (conv1d) search, ~7 min
    python benchmarks/onnx_parity.py results/mnist_cnn results/signals_conv1d   # finished ones
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.config import bits_text  # noqa: E402
from distopt.exporters import EXPORTERS, export_front  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("mnist_cnn", "signals_conv1d")
HEADERS = ["experiment", "model", "bits", "sparsity", ".dopt bytes", ".onnx bytes",
           "PyTorch test acc", "ORT test acc", "identical predictions", "PyTorch ms", "ORT ms"]


def _search(name: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix="distopt-onnx-")) / name
    subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                    str(ROOT / "configs" / f"{name}.yaml"), "--output", str(out)], check=True,
                   capture_output=True, cwd=ROOT)
    return out


def rows(experiment: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in sorted(entries, key=lambda e: e["metrics"][M.SIZE_BYTES]):
        m, o = e["metrics"], e["onnx"]
        out.append({"experiment": experiment, "trial_id": e["trial_id"],
                    "bits": bits_text(e["config"]["compress"]),
                    "sparsity": 1 - m[M.NONZERO_PARAMS] / m[M.PARAMS],
                    "dopt_bytes": int(m[M.SIZE_BYTES]), "onnx_bytes": o[M.ONNX_BYTES],
                    "pytorch_accuracy": o["test_accuracy_pytorch"],
                    "ort_accuracy": o["test_accuracy_onnxruntime"],
                    "agreement": o["agreement"], "max_abs_logit_diff": o["max_abs_logit_diff"],
                    "samples": o["samples"], "pytorch_ms": o[M.LATENCY_MS],
                    "ort_ms": o[M.ORT_LATENCY_MS]})
    return out


def markdown(payload: dict[str, Any]) -> str:
    return table(HEADERS, [[r["experiment"], r["trial_id"], r["bits"], f"{r['sparsity']:.0%}",
                            f"{r['dopt_bytes']:,}", f"{r['onnx_bytes']:,}",
                            f"{r['pytorch_accuracy']:.4f}", f"{r['ort_accuracy']:.4f}",
                            f"{r['agreement']:.2%}", f"{r['pytorch_ms']:.3f}",
                            f"{r['ort_ms']:.3f}"] for r in payload["rows"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="*", type=Path, help="finished search directories")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    dirs = args.experiments or [_search(name) for name in CONFIGS]
    all_rows = []
    for d in dirs:
        all_rows += rows(d.name, export_front(d, EXPORTERS["onnx"]))
    payload = {"command": "python benchmarks/onnx_parity.py " + " ".join(
        str(d) for d in args.experiments), "rows": all_rows,
        "worst_agreement": min(r["agreement"] for r in all_rows),
        "worst_accuracy_gap": max(abs(r["ort_accuracy"] - r["pytorch_accuracy"])
                                  for r in all_rows)}
    path = write("onnx_parity", payload, args.out)
    print(markdown(payload))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
