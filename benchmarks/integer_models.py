"""Integer-only models on the default search: the front in device units, exported to C and
TensorFlow Lite and checked on both runtimes; integer against weight-only accuracy for the
front's best configuration; and the same search under hard budgets.

    python benchmarks/integer_models.py            # runs both searches and the pairs, ~15 min
    python benchmarks/integer_models.py SEARCH BUDGETED   # finished searches (pairs are kept
                                                          # in SEARCH/integer_pairs)

The searches are the default one (configs/mnist_cnn.yaml, embedded data, 3 minutes) with
``compress.quantize.activation_bits 8``, ``qat``, weight bits drawn from {2, 4, 8} and flash
as the size objective; the budgeted one adds ``search.constraints: {flash_bytes: 4000,
peak_ram_bytes: 8192}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

from distopt import metrics as M  # noqa: E402
from distopt.config import bits_text  # noqa: E402
from distopt.exporters import EXPORTERS, export_front  # noqa: E402
from distopt.results.trials import load_trials  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["compress.quantize.activation_bits=8", "compress.quantize.qat=true",
             "search.space.compress.quantize.bits={choices: [2, 4, 8]}",
             "search.objectives=[[val_accuracy, max], [flash_bytes, min]]"]
BUDGETS = "search.constraints={flash_bytes: 4000, peak_ram_bytes: 8192}"
SEEDS = (0, 1)
HEADERS = ["model", "bits", "sparsity", ".dopt bytes", "flash (computed)", "flash (C, compiled)",
           "RAM (computed)", "TFLM arena (activations / total)", "MACs", "val acc", "test acc",
           "C same class", "TFLM same class", "max logit diff (C / TFLM)"]


def _search(name: str, extra: list[str]) -> Path:
    out = Path(tempfile.mkdtemp(prefix="distopt-int-")) / name
    subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                    str(ROOT / "configs" / "mnist_cnn.yaml"), "--output", str(out),
                    *OVERRIDES, *extra], check=True, capture_output=True, cwd=ROOT)
    return out


def front_rows(search: Path) -> list[dict[str, Any]]:
    """The front, exported to C and TFLite, each checked on its runtime (whole test set)."""
    c = {e["trial_id"]: e["c"] for e in export_front(search, EXPORTERS["c"])}
    out = []
    for e in sorted(export_front(search, EXPORTERS["tflite"]),
                    key=lambda e: e["metrics"][M.FLASH_BYTES]):
        m, t, ce = e["metrics"], e["tflite"], c[e["trial_id"]]
        out.append({"trial_id": e["trial_id"], "bits": bits_text(e["config"]["compress"]),
                    "sparsity": 1 - m[M.NONZERO_PARAMS] / m[M.PARAMS],
                    "dopt_bytes": int(m[M.SIZE_BYTES]), "flash_bytes": int(m[M.FLASH_BYTES]),
                    "c_flash_bytes": ce[M.FLASH_BYTES], "peak_ram_bytes": int(m[M.PEAK_RAM_BYTES]),
                    "c_arena_bytes": ce["arena_bytes"], "tflm_arena_bytes": t["tflm_arena_bytes"],
                    "tflm_arena_total_bytes": t["tflm_arena_total_bytes"],
                    "macs": int(m[M.MACS]), "val_accuracy": m[M.VAL_ACCURACY],
                    "test_accuracy": m[M.TEST_ACCURACY], "c_agreement": ce["agreement"],
                    "tflm_agreement": t["agreement"], "samples": t["samples"],
                    "c_max_diff": ce["max_abs_logit_diff"],
                    "tflm_max_diff": t["max_abs_logit_diff"],
                    "tflite_bytes": t["tflite_bytes"]})
    return out


def pairs(search: Path) -> list[dict[str, Any]]:
    """The front's most accurate configuration (by validation) trained again from scratch
    with float and with int8 activations, seeds 0 and 1: weight-only against integer."""
    manifest = json.loads((search / M.MANIFEST_FILE).read_text())
    best = max(manifest["models"], key=lambda e: e["metrics"][M.VAL_ACCURACY])
    cfg_path = search / "integer_pairs" / "config.yaml"
    cfg_path.parent.mkdir(exist_ok=True)
    cfg_path.write_text(yaml.safe_dump({**best["config"], "search": {}}))
    out = []
    for seed in SEEDS:
        for kind, bits in (("float", "null"), ("int8", "8")):
            run = search / "integer_pairs" / f"{kind}_s{seed}"
            if not (run / "metrics.json").exists():
                subprocess.run([sys.executable, "-m", "distopt", "train", "--config",
                                str(cfg_path), "--output", str(run), "--overwrite",
                                f"compress.quantize.activation_bits={bits}",
                                f"train.seed={seed}"], check=True, capture_output=True,
                               cwd=ROOT)
            m = json.loads((run / "metrics.json").read_text())
            out.append({"trial_id": best["trial_id"], "activations": kind, "seed": seed,
                        "val_accuracy": m[M.VAL_ACCURACY], "test_accuracy": m[M.TEST_ACCURACY],
                        "flash_bytes": m[M.FLASH_BYTES], "peak_ram_bytes": m[M.PEAK_RAM_BYTES]})
    return out


def budgeted(search: Path) -> dict[str, Any]:
    rows = load_trials(search)
    front = [r for r in rows if r["pareto"]]
    return {"constraints": {"flash_bytes": 4000, "peak_ram_bytes": 8192},
            "configurations": len(rows),
            "refused_before_training": sum(r["status"] == "OVER_BUDGET" for r in rows),
            "front": [{"trial_id": r["trial_id"], "flash_bytes": int(r[M.FLASH_BYTES]),
                       "peak_ram_bytes": int(r[M.PEAK_RAM_BYTES]),
                       "val_accuracy": r[M.VAL_ACCURACY], "test_accuracy": r[M.TEST_ACCURACY]}
                      for r in front],
            "all_front_within_budget": all(r[M.FLASH_BYTES] <= 4000 and
                                           r[M.PEAK_RAM_BYTES] <= 8192 for r in front)}


def markdown(payload: dict[str, Any]) -> str:
    lines = [table(HEADERS, [
        [r["trial_id"], r["bits"], f"{r['sparsity']:.0%}", f"{r['dopt_bytes']:,}",
         f"{r['flash_bytes']:,}", f"{r['c_flash_bytes']:,}", f"{r['peak_ram_bytes']:,}",
         f"{r['tflm_arena_bytes']:,} / {r['tflm_arena_total_bytes']:,}", f"{r['macs']:,}",
         f"{r['val_accuracy']:.4f}", f"{r['test_accuracy']:.4f}", f"{r['c_agreement']:.2%}",
         f"{r['tflm_agreement']:.2%}", f"{r['c_max_diff']:g} / {r['tflm_max_diff']:g}"]
        for r in payload["front"]]), ""]
    p = payload["pairs"]
    if p:
        lines += [f"The front's most accurate configuration ({p[0]['trial_id']}) trained again "
                  "from scratch, weight-only (float activations) against integer, same seeds:",
                  "", table(["activations", "seed", "val acc", "test acc", "flash", "RAM"],
                            [[r["activations"], r["seed"], f"{r['val_accuracy']:.4f}",
                              f"{r['test_accuracy']:.4f}", f"{r['flash_bytes']:,}",
                              f"{r['peak_ram_bytes']:,}"] for r in p]), ""]
        for key in ("val_accuracy", "test_accuracy"):
            f = [r[key] for r in p if r["activations"] == "float"]
            i = [r[key] for r in p if r["activations"] == "int8"]
            lines.append(f"Mean {key.split('_')[0]} accuracy over seeds: weight-only "
                         f"{sum(f) / len(f):.4f}, integer {sum(i) / len(i):.4f} "
                         f"({100 * (sum(i) / len(i) - sum(f) / len(f)):+.2f} points).")
        lines.append("")
    b = payload.get("budgeted")
    if b:
        best = max((r["val_accuracy"] for r in b["front"]), default=float("nan"))
        best_test = max((r["test_accuracy"] for r in b["front"]), default=float("nan"))
        lines += [f"Under `search.constraints: {{flash_bytes: 4000, peak_ram_bytes: 8192}}`: "
                  f"{b['configurations']} configurations, {b['refused_before_training']} "
                  "refused before training (their architecture alone over a budget), front of "
                  f"{len(b['front'])}, every one within both budgets: "
                  f"{'yes' if b['all_front_within_budget'] else 'NO'}; its best val accuracy "
                  f"{best:.4f} (test {best_test:.4f}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("searches", nargs="*", type=Path,
                    help="finished searches: the integer one, then the budgeted one")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    search = args.searches[0] if args.searches else _search("mnist_cnn_int8", [])
    limited = args.searches[1] if len(args.searches) > 1 else _search("mnist_cnn_int8_budget",
                                                                     [BUDGETS])
    payload = {"command": "python benchmarks/integer_models.py " + " ".join(
        str(d) for d in args.searches), "overrides": OVERRIDES, "front": front_rows(search),
        "pairs": pairs(search), "budgeted": budgeted(limited)}
    path = write("integer_models", payload, args.out)
    print(markdown(payload))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
