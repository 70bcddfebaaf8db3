"""Run the benchmarks and render one page, benchmarks/BENCHMARKS.md, from their JSON files.

Every section comes from one JSON in benchmarks/results/ that records the machine, package
versions and seeds; every comparison in it was measured side by side in one run. Sections whose
JSON is missing say so (and which command produces it).

    python benchmarks/run_all.py                      # run throughput, search efficiency and the
                                                      # default search (~45 min on 2 cores), render
    python benchmarks/run_all.py --only render        # render the page from existing JSON
    python benchmarks/run_all.py --only default_search
    python benchmarks/headline.py results/mnist_cnn_full   # the headline (after its search)
    python benchmarks/onnx_parity.py                  # ONNX Runtime vs PyTorch on two fronts
    python benchmarks/format_v2.py FILE.dopt ...       # artifact format v1 vs v2, part by part
    python benchmarks/frontier_ablation.py            # tiny-model levers, each alone; v1 vs v2
    python benchmarks/integer_models.py               # integer models: C and TFLM parity, budgets
    python benchmarks/early_stopping.py               # stopped trials re-run: would they be on
                                                      # the front? (keep_extremes off vs on)
    python benchmarks/recsys.py                       # clicks-mini: each knob alone; the front
    python benchmarks/anchor_layout.py MNIST_DIR      # the CNN-16's conv geometry, ours vs anchor
    python benchmarks/reproduction.py --mnist MNIST_DIR  # BitNetMCU's CNN-16 in distopt, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import headline  # noqa: E402
import format_v2  # noqa: E402
import frontier_ablation  # noqa: E402
import anchor_layout  # noqa: E402
import integer_models  # noqa: E402
import recsys  # noqa: E402
import reproduction  # noqa: E402
import onnx_parity  # noqa: E402
from _common import RESULTS, table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = Path(__file__).resolve().parent / "BENCHMARKS.md"
STEPS = ("throughput", "search_efficiency", "default_search")


def run_default_search() -> Path:
    """The default search as a user runs it: wall time, trials, the front's span."""
    from distopt.results.trials import load_trials

    out = Path(tempfile.mkdtemp(prefix="distopt-default-")) / "mnist_cnn"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "distopt" / "search.py"), "--config",
                        str(ROOT / "configs" / "mnist_cnn.yaml"), "--output", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"default search failed:\n{p.stderr[-2000:]}")
    return write("default_search", {
        "command": "python distopt/search.py --config configs/mnist_cnn.yaml", "wall_s": wall,
        "stderr_lines": len(p.stderr.splitlines()), **summarize(load_trials(out)),
        "seeds": {"search.seed": 0, "train.seed": 0}})


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A default search's counts, overhead and front from its trials.parquet rows."""
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["size_bytes"])
    trials = [r for r in rows if not r.get("parent_id")]  # Tune trials; children apart
    overhead = sorted(r["overhead_s"] for r in trials if r["status"] == "COMPLETE")
    return {
        "trials": len(trials), "children": len(rows) - len(trials),
        "failed": sum(r["status"] == "FAILED" for r in rows),
        "stopped": sum(r["status"] == "STOPPED" for r in rows),
        "overhead_s_median": overhead[len(overhead) // 2] if overhead else None,
        "front": [{"bytes": r["size_bytes"], "val_accuracy": r["val_accuracy"],
                   "test_accuracy": r["test_accuracy"], "child": bool(r.get("parent_id"))}
                  for r in front]}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(d: dict[str, Any]) -> str:
    m = d["machine"]
    return (f"*{m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
            f"Ray {m['ray']}, {m['date']}*")


def _missing(name: str, command: str) -> list[str]:
    return [f"Not measured yet: `{command}` writes `results/{name}.json`.", ""]


def _search_efficiency(name: str, se: dict[str, Any]) -> list[str]:
    """One search_efficiency JSON (a set of budgets and setups) as text, plot and table."""
    from search_efficiency import HEADERS

    budgets = sorted({r["budget_s"] for r in se["runs"]})
    seeds = sorted({r["seed"] for r in se["runs"]})
    setups = sorted({r["setup"] for r in se["runs"]})
    lines = [f"### {', '.join(f'{b:g} s' for b in budgets)}: "
             f"{', '.join(setups)}; {len(seeds)} seed(s)", "",
             _machine(se), "", "The default config at equal wall-clock budgets, 2 trials at "
             "once: `baseline` is the search before early stopping and trial actors (FIFO, 2 "
             "dense epochs, each trial a Ray Train job); `default` is today's (trials in reused "
             "Tune actors, `mo_asha`, up to 6 dense epochs, NSGA-II, 3 children per dense "
             "model: train once, compress many); `default-random` and `default-tpe` the same "
             "with random search and multivariate TPE (and, where measured, `no-children` the "
             "default without children). Hypervolume of (val accuracy, log10 bytes) above "
             f"{tuple(se['reference'])}, mean over seeds. *Time to baseline HV*: the median "
             "share of the baseline's wall time a setup needs to reach the baseline's final "
             "hypervolume (0.5 = twice the hypervolume per CPU-hour). Overhead per trial: median "
             "of `overhead_s` in `trials.parquet` (trial wall time minus time in `fit`); "
             "aggregate: trial slots x wall time minus all time in `fit`, per trial (actor "
             "start-up, scheduling gaps and the idle tail included). *Trials* are Tune trials; "
             "*complete configs* and *configs evaluated / min* count every decoded, evaluated "
             "configuration, children included. *Share of best-known HV*: the setup's mean "
             "hypervolume over that of the union of every run's front at the budget.", "",
             f"![hypervolume over wall time](results/{name}.png)", ""]
    if any(len(row) < len(HEADERS) for row in se["table"]):  # an older file: fewer columns
        lines.append(table(HEADERS[:len(se["table"][0])], se["table"]))
    else:
        lines.append(table(HEADERS, se["table"]))
    ratios = [(k, v) for k, v in se["summary"].items() if "_vs_random@" in k]
    if ratios:
        lines += ["", "Sampler against random search at equal wall time (mean hypervolume "
                  "ratio): " + "; ".join(f"{k.replace('_vs_random@', ' / random at ')} s: "
                                         f"**{v:.3f}x**" for k, v in ratios) + "."]
    lines.append("")
    return lines


def render(page: Path = PAGE) -> Path:
    lines = ["# distopt benchmarks", "",
             "Generated by `python benchmarks/run_all.py --only render` from the JSON files in "
             "`benchmarks/results/` (each records its machine, versions and seeds). Ratios "
             "compare setups measured side by side in one run; this machine is shared, so "
             "absolute numbers move between runs.", ""]

    lines += ["## Headline: full MNIST front vs BitNetMCU and Deep Compression", ""]
    hl = _load("headline")
    if hl:
        wall = (f" in **{hl['search_wall_s'] / 60:.0f} min** wall (teacher, search and "
                "retrainings)" if hl.get("search_wall_s") else "")
        seeds = (" The accuracy compared with the anchors and goals is the mean over the "
                 "front's retrainings with 3 seeds (`search.final.seeds`)."
                 if hl.get("accuracy") == "mean over seeds" else "")
        lines += [_machine(hl), "", f"`configs/{Path(hl['experiment']).name}.yaml`: "
                  f"{hl['trials']} trials{wall}, {hl['complete']} complete, "
                  f"{len(hl['front'])} on the front. Test accuracy of each front model is "
                  f"measured on its decoded file (whole file bytes, format v2).{seeds}", "",
                  "![headline](results/headline.png)", ""]
        lines += [headline.markdown(hl), ""]
    else:
        lines += _missing("headline", "python benchmarks/headline.py <experiment dir>")

    lines += ["## Training throughput: plain PyTorch vs Ray Train", ""]
    tp = _load("throughput")
    if tp:
        lines += [_machine(tp), "", "Seed CNN, batch 128, steady-state samples/s (median of "
                  "epochs after the first).", ""]
        lines.append(table(["setup", "precision", "samples/s", "vs plain (same precision)",
                            "start-up s", "teardown s"],
                           [[r["setup"], r["precision"], f"{r['samples_per_s']:,.0f}",
                             f"{r['vs_plain']:.2f}x", f"{r['startup_s']:.1f}",
                             f"{r['teardown_s']:.1f}"] for r in tp["results"]]))
        a, mem = tp["augmentation"], tp["memory"]
        lines += ["", f"Augmentation: {a['augment_ms']:.2f} ms per batch of {a['batch']} vs a "
                  f"{a['precision']} training step of {a['step_ms']:.1f} ms = "
                  f"**{100 * a['ratio']:.1f}%** of a step.", "",
                  f"Peak memory of a 1-worker trial: driver {mem['driver_peak_rss_mb']:,.0f} MB "
                  f"+ worker {mem['worker_peak_rss_mb']:,.0f} MB = "
                  f"**{mem['driver_plus_worker_mb']:,.0f} MB**.", ""]
    else:
        lines += _missing("throughput", "python benchmarks/throughput.py")
    rnn = (tp or {}).get("rnn_step") or (_load("throughput_rnn") or {}).get("rnn_step")
    if rnn:
        lines += ["### Recurrent cells, fp32 vs bf16 (training step, batch 128)", ""]
        lines.append(table(["input", "cell", "fp32 ms", "bf16 ms", "bf16 speed-up"],
                           [[r["input"], r["cell"], f"{r['fp32_ms']:.1f}", f"{r['bf16_ms']:.1f}",
                             f"{r['bf16_speedup']:.2f}x"] for r in rnn]))
        lines.append("")

    lines += ["## Search efficiency and per-trial overhead", ""]
    for name in ("search_efficiency", "search_efficiency_600"):
        se = _load(name)
        if se and "table" in se:
            lines += _search_efficiency(name, se)
        elif name == "search_efficiency":
            lines += _missing(name, "python benchmarks/search_efficiency.py")

    lines += ["## The default search", ""]
    ds = _load("default_search")
    if ds:
        front = ds["front"]
        stopped = f", {ds['stopped']} stopped early" if ds.get("stopped") else ""
        if ds.get("children"):
            stopped += (f"; plus {ds['children']} children (train once, compress many), "
                        f"{sum(f.get('child', False) for f in front)} of them on the front")
        lines += [_machine(ds), "", f"`{ds['command']}`: **{ds['wall_s']:.0f} s** wall "
                  f"(Ray start-up and the report included), {ds['trials']} trials "
                  f"({ds['failed']} failed{stopped}), a front of {len(front)} from "
                  f"{front[0]['bytes']:,.0f} B to {front[-1]['bytes']:,.0f} B "
                  f"({front[-1]['bytes'] / front[0]['bytes']:.0f}x)."
                  + (f" Per-trial overhead (median `overhead_s`): {ds['overhead_s_median']:.2f} s."
                     if ds.get("overhead_s_median") is not None else "")
                  + (f" Lines on stderr: {ds['stderr_lines']}." if "stderr_lines" in ds else ""),
                  ""]
        if "val_accuracy" in front[0]:
            lines += [table(["bytes", "val accuracy", "test accuracy"],
                            [[f"{f['bytes']:,.0f}", f"{f['val_accuracy']:.4f}",
                              f"{f['test_accuracy']:.4f}"] for f in front]), ""]
    else:
        lines += _missing("default_search", "python benchmarks/run_all.py --only "
                          "default_search")

    lines += ["## The tiny-model levers, each alone, and format v2 against v1", ""]
    fa = _load("frontier_ablation")
    if fa:
        lines += [_machine(fa), "", f"`{fa['command']}`: one small compressed CNN on the "
                  "embedded data (`" + " ".join(fa["base"]) + "`), and the same with one "
                  "change each; test accuracy of the decoded file over the 2,000 embedded test "
                  f"images, over seeds. Teacher: seed CNN, {fa['teacher_test_accuracy']:.4f} "
                  "test accuracy, trained once. Bytes are the format-v2 file's, split into "
                  "header / index / scales+biases / values (exact: the sections are compressed "
                  "apart); *v1 bytes* are the same decoded weights written in format v1 "
                  "(checked to decode to identical parameters; v1 holds no 3-bit or ternary "
                  "weights, nor codebooks). *clusters k*: weight clustering "
                  "(`compress.cluster.k`) instead of 4-bit integer codes: each weight tensor's "
                  "non-zero weights share k fine-tuned values, stored as a codebook (format "
                  "v3; bytes are then v3's).", ""]
        width = len(frontier_ablation.HEADERS)  # runs before flash was recorded lack it
        lines += [table(frontier_ablation.HEADERS,
                        [r + ["-"] * (width - len(r)) for r in fa["table"]]), ""]
        rows = {r[0]: r for r in fa["table"]}
        if "clusters 15" in rows and "base" in rows:
            c15, base = rows["clusters 15"], rows["base"]
            saved = 1 - float(c15[5].replace(",", "")) / float(base[5].replace(",", ""))
            lines += [f"Weight clustering against 4-bit codes (15 non-zero levels too): "
                      f"{c15[4]} points for {saved:.0%} fewer bytes with 15 shared values per "
                      "tensor, fine-tuned for 2 epochs after 80% pruning.", ""]
    else:
        lines += _missing("frontier_ablation", "python benchmarks/frontier_ablation.py")
    lines += ["## BitNetMCU's building blocks, each alone (issue 23)", ""]
    fb = _load("frontier_blocks")
    if fb:
        lines += [_machine(fb), "", f"`{fb['command'].strip()}`: the base above against the "
                  "block kinds and options BitNetMCU's small CNNs are made of, each alone, in "
                  "one run over seeds: *depthwise blocks* (`model.block: depthwise`: depthwise "
                  "convs alone after a full first conv, every block 8 channels wide), *no "
                  "biases* (`model.bias: false`), *aug prob 0.5* (`augment.prob: 0.5`: half the "
                  "training images seen clean each epoch, at the same steps), with separable "
                  "blocks beside them. *flash mean*: packed weights + float32 scales and biases "
                  "(the weight-only file run in place).", ""]
        lines += [table(frontier_ablation.HEADERS, fb["table"]), ""]
    else:
        lines += _missing("frontier_blocks", "python benchmarks/frontier_ablation.py --setups "
                          "blocks --name frontier_blocks")
    fc = _load("frontier_codings")
    if fc:
        lines += [f"The codings and schedule added next, the same way: {_machine(fc)}", "",
                  f"`{fc['command'].strip()}`: *per-tensor scales* (`compress.quantize.scales: "
                  "tensor`: one scale a layer), *cosine fine-tune* (`compress.finetune_schedule: "
                  "cosine`), and *odd levels* (`compress.quantize.odd_levels`: 16 levels "
                  "without a zero at 4 bits), which hold no pruned zeros and so are measured "
                  "against the base without pruning. *flash mean* as above.", "",
                  table(frontier_ablation.HEADERS, fc["table"]), ""]
    else:
        lines += _missing("frontier_codings", "python benchmarks/frontier_ablation.py --setups "
                          "codings --name frontier_codings")
    lines += ["## Artifact format v2 against v1, part by part", ""]
    fv = _load("format_v2")
    if fv:
        lines += [_machine(fv), "", f"`{fv['command']}`: front models of the headline search, "
                  "each written in both formats from the same decoded weights (checked to "
                  "decode identically); each part compressed on its own with the best codec, "
                  "v1's part as v1 stores it against v2's section. v1's parts are compressed "
                  "jointly in its real file, so they need not add up to its length; v2's do.",
                  ""]
        lines += [format_v2.markdown(fv), ""]
    else:
        lines += _missing("format_v2", "python benchmarks/format_v2.py FILE.dopt ...")
    lines += ["## ONNX export: ONNX Runtime against PyTorch", ""]
    op = _load("onnx_parity")
    if op:
        lines += [_machine(op), "", f"`{op['command'].strip()}`: `distopt export` on the fronts "
                  "of finished searches (first column: the default MNIST search, the conv1d "
                  "signals search with ONNX Runtime latency as a third objective, the headline "
                  "full-MNIST search). Test accuracy of each model "
                  "in both runtimes over the whole test set of its data, the share of identical "
                  "predictions, and batch-1 one-thread latency (median after warm-up) measured "
                  "side by side. Worst agreement "
                  f"**{op['worst_agreement']:.2%}**, worst accuracy gap "
                  f"**{100 * op['worst_accuracy_gap']:.2f} points**.", ""]
        lines += [onnx_parity.markdown(op), ""]
    else:
        lines += _missing("onnx_parity", "python benchmarks/onnx_parity.py")
    lines += ["## Integer models: the default search in device units, on C and TFLite Micro", ""]
    im = _load("integer_models")
    if im:
        lines += [_machine(im), "", f"`{im['command'].strip()}`: the default search (embedded "
                  "data, 3 minutes) with `compress.quantize.activation_bits: 8` and QAT, weight "
                  "bits from {2, 4, 8}, flash as the size objective; its front exported with "
                  "`distopt export --format c` (compiled by gcc, run on the whole test set) and "
                  "`--format tflite` (run on TensorFlow Lite Micro's interpreter). *flash*: "
                  "packed weight codes + an int32 multiplier and int8 shift per output channel "
                  "+ int32 biases (the compiled C's `sizeof` of its arrays beside it); *RAM*: "
                  "the largest int8 input + output buffer (TFLM's arena: its activation part, "
                  "then with TFLM's own structures). Accuracies are the integer reference's; "
                  "*same class*: the share of test inputs the runtime classifies as the "
                  "reference does; *max logit diff*: the largest difference of an int8 logit "
                  "from the reference's, in int8 steps (0: bit-exact).", ""]
        lines += [integer_models.markdown(im), ""]
    else:
        lines += _missing("integer_models", "python benchmarks/integer_models.py")
    lines += ["## Early stopping: the trials it stopped, run to the end", ""]
    es = _load("early_stopping")
    if es:
        lines += [_machine(es), "", f"`{es['command'].strip()}`: the default search "
                  "(`configs/mnist_cnn.yaml`, embedded data, 3 minutes, `mo_asha`) under each "
                  "rule, per seed; then every trial it stopped at a rung trained to the end "
                  "(the same values and seed: the run it would have been). *would enter the "
                  "front*: re-runs that no complete trial of that search dominates on "
                  "(validation accuracy, bytes). *spread*: the rung's non-dominated ranking "
                  "alone (`search.keep_extremes: false`, the rule before issue 23); "
                  "*extremes*: a trial best at its rung on any objective always goes on "
                  "(today's default). Best accuracies and hypervolume (reference 80%, "
                  "10^6 B, log10 bytes) are the searches' own, means over seeds.", ""]
        lines += [es["table"], ""]
        per_seed = "; ".join(
            f"{r['rule']} seed {r['seed']}: {r['would_enter_front']} of {r['rerun']}"
            for r in sorted(es["runs"], key=lambda r: (r["seed"], r["rule"])))
        lines += [f"Per search: {per_seed}. The two rules' searches part ways at the first "
                  "rung where they differ (the sampler learns from other results), so trial "
                  "and stop counts differ too.", ""]
    else:
        lines += _missing("early_stopping", "python benchmarks/early_stopping.py")
    lines += ["## The reproduction: BitNetMCU's CNN-16 trained by distopt", ""]
    rp = _load("reproduction")
    if rp:
        a = rp["anchor"]
        lines += [_machine(rp), "", f"`{rp['command']}` (runs made with `python -m distopt "
                  "train --config configs/bitnetmcu_cnn16.yaml data.path=MNIST "
                  "train.cpus_per_worker=1 train.seed=S` and the variant's keys as overrides, "
                  "two at a time on 2 cores): test accuracy of the decoded file's integer "
                  "reference on the 10,000 test images (float activations where "
                  "`activation_bits=None`); *float val*: the dense model's validation accuracy "
                  "before the quantization-aware epochs; *flash*: packed weights plus one int32 "
                  "multiplier and int8 shift per scale (per layer with `scales: tensor`, per "
                  "output channel with `channel`); *packed weights*: the anchor's unit. "
                  f"The anchor: **{100 * a['test_accuracy']:.2f}% at "
                  f"{a['weight_flash_bytes']:,} B of packed weights** (one run, published). "
                  "Rows other than *as committed* undo steps of the recipe (one seed each: "
                  "indications, not measurements of a difference).", "",
                  reproduction.markdown(rp), ""]
    else:
        lines += _missing("reproduction", "python benchmarks/reproduction.py --mnist MNIST")
    lines += ["## The reproduction's conv geometry against BitNetMCU's (float)", ""]
    al = _load("anchor_layout")
    lines += [_machine(al), "", anchor_layout.markdown(al), ""] if al else \
        _missing("anchor_layout", "python benchmarks/anchor_layout.py MNIST_DIR")
    lines += ["## Recommendation: clicks-mini, where the bytes are embedding rows", ""]
    rs = _load("recsys")
    if rs:
        lines += [_machine(rs), "", f"`{rs['command']}`: one base, `configs/clicks.yaml`'s "
                  "model at 4,096 rows for the user and item tables (256 for category and "
                  "hour, 32 for device: `data.column_buckets`), 8 dimensions, dot interaction, "
                  "dense 32 (5 dense + 1 fine-tune epoch, 8-bit weights); each row changes one "
                  "knob (`data.column_buckets` {}: every column into 4,096 buckets; "
                  "`model.buckets`, `model.embed_dim`, `compress.quantize.bits_embedding` for "
                  "the tables alone, `compress.prune_rows.ratio`). AUC of the decoded file on "
                  f"6,000 validation and 10,000 test rows, means over seeds {rs['seeds']}. "
                  "*bytes*: the `.dopt` file (a zero row costs a few bits in its sparse index); "
                  "*flash*: packed codes, float32 scales and biases, as a kernel reading rows "
                  "in place keeps them (a zero row costs as much as any); the tables' share of "
                  "flash, and of bytes: 1 - (the decoded model with every table zero, "
                  "re-encoded at its bits) / (the same model re-encoded as it is). Flash and "
                  "shares are seed 0's.", "",
                  table(recsys.HEADERS, recsys.knob_rows(rs["knobs"])), ""]
        if "search" in rs:
            se = rs["search"]
            lines += [f"`{se['command']}`: {se['trials']} trials ({se['complete']} complete) "
                      f"in {se['wall_s']:.0f} s; its front (test AUC of the decoded file, once; "
                      "one seed):", "", table(recsys.FRONT_HEADERS,
                                              recsys.front_rows(se["front"])), ""]
    else:
        lines += _missing("recsys", "python benchmarks/recsys.py")
    lines += ["## GPU", ""]
    gpu = _load("gpu")
    if gpu and "skipped" not in gpu:
        m = gpu["machine"]
        lines += [f"{m['gpu']} x {m['gpu_count']}, torch {m['torch']}, {m['date']} "
                  "(`bash benchmarks/gpu.sh`; CUDA events, interleaved repeats)", "",
                  table(["batch", "channels-last", "precision", "ms/step", "samples/s",
                         "vs fp32"],
                        [[r["batch"], r["channels_last"], r["precision"], f"{r['step_ms']:.2f}",
                          f"{r['samples_per_s']:,.0f}", f"{r['vs_fp32']:.2f}x"]
                         for r in gpu["step"]]), ""]
        if "runs" in gpu.get("fit", {}):
            lines += [table(["training arrays", "wall s", "samples/s", "val acc"],
                            [[r["data"], f"{r['wall_s']:.1f}",
                              f"{r['samples_per_s_last_epoch']:,.0f}",
                              f"{r['val_accuracy']:.4f}"] for r in gpu["fit"]["runs"]]), ""]
        if isinstance(gpu.get("artifact"), list):
            lines += [table(["decoded artifact on", "test accuracy", "differs from CPU"],
                            [[r["where"], f"{r['accuracy']:.4f}", r["differs_from_cpu"]]
                             for r in gpu["artifact"]]), ""]
    else:
        lines += ["Not measured on a GPU yet: `bash benchmarks/gpu.sh` on a CUDA machine "
                  "writes `results/gpu.json`.", ""]
    page.write_text("\n".join(lines))
    return page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=[*STEPS, "render"], default=None)
    args = ap.parse_args()
    steps = STEPS if args.only is None else (() if args.only == "render" else (args.only,))
    for step in steps:
        if step == "default_search":
            print(f"wrote {run_default_search()}")
        else:
            subprocess.run([sys.executable, str(Path(__file__).parent / f"{step}.py")],
                           check=True)
    print(f"wrote {render()}")


if __name__ == "__main__":
    main()
