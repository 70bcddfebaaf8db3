from __future__ import annotations

import json
import math

import pytest
import torch

from distopt import metrics as M
from distopt.config import load_config
from distopt.data import load_splits
from distopt.runtime import InputNorm
from distopt.training import (TrainingDiverged, WorkerEnv, evaluate_artifact, fit,
                              resolve_precision)
from distopt.training.precision import cpu_bf16_supported
from distopt.models import build_model, seed_cnn
from distopt.orchestration.children import child_configs
from distopt.training.dense_store import dense_key

from conftest import TINY


class Recorder:
    def __init__(self, crash_after: int | None = None) -> None:
        self.reports: list[dict] = []
        self.states: list[dict] = []
        self.files: list[dict] = []
        self.crash_after = crash_after

    def __call__(self, metrics, state, files=None):
        self.reports.append(dict(metrics))
        if state is not None:
            self.states.append(state)
        if files:
            self.files.append(files)
        if self.crash_after is not None and metrics[M.EPOCH] == self.crash_after:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.slow
def test_fit_reports_every_epoch_then_the_decoded_artifact(splits):
    cfg = load_config(None, TINY + ["compress.quantize.bits=4"])
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, evaluate_test=True, splits=splits)
    phases = [r[M.PHASE] for r in rec.reports]
    assert phases == ["train", "train", "finetune", "final"]
    for r in rec.reports:
        for key in M.ALWAYS_REPORTED:
            assert key in r  # Tune's strict metric check sees every key on every result
    final = rec.reports[-1]
    assert final[M.SIZE_BYTES] == len(out["artifact"]) == len(rec.files[-1]["model.dopt"])
    assert final[M.NONZERO_PARAMS] < 0.6 * final[M.PARAMS]
    # The accuracy reported is that of the file, measured again here from its bytes.
    again = evaluate_artifact(out["artifact"], splits, "val")
    assert again["val_accuracy"] == pytest.approx(final[M.VAL_ACCURACY], abs=1e-9)
    assert 0 <= final[M.TEST_ACCURACY] <= 1 and final[M.LATENCY_MS] > 0
    assert math.isnan(rec.reports[0][M.SIZE_BYTES])


@pytest.mark.slow
def test_no_finetune_without_pruning(splits):
    cfg = load_config(None, TINY + ["compress.prune.ratio=0"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    assert [r[M.PHASE] for r in rec.reports] == ["train", "train", "final"]


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
@pytest.mark.slow
def test_resume_from_checkpoint_matches_an_uninterrupted_run(splits, kind):
    cfg = load_config(None, TINY + ["train.epochs=3", f"compress.prune.kind={kind}"])
    full = Recorder()
    fit(cfg, WorkerEnv(), full, splits=splits)
    crashed = Recorder(crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, WorkerEnv(), crashed, splits=splits)
    state = crashed.states[-1]
    assert state["epoch"] == 1
    resumed = Recorder()
    fit(cfg, WorkerEnv(), resumed, state=state, splits=splits)
    assert [r[M.EPOCH] for r in resumed.reports] == [2, 3, 3]  # starts after the checkpoint
    for a, b in zip(full.reports[2:], resumed.reports):
        assert a[M.TRAIN_LOSS] == pytest.approx(b[M.TRAIN_LOSS], rel=1e-6)
        assert a[M.VAL_ACCURACY] == b[M.VAL_ACCURACY]
    assert full.reports[-1][M.SIZE_BYTES] == resumed.reports[-1][M.SIZE_BYTES]


@pytest.mark.slow
def test_resume_inside_finetuning_keeps_the_masks(splits):
    cfg = load_config(None, TINY + ["compress.finetune_epochs=2", "compress.prune.ratio=0.8"])
    crashed = Recorder(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, WorkerEnv(), crashed, splits=splits)
    state = crashed.states[-1]
    assert state["masks"] is not None
    resumed = Recorder()
    fit(cfg, WorkerEnv(), resumed, state=state, splits=splits)
    assert [r[M.PHASE] for r in resumed.reports] == ["finetune", "final"]
    assert resumed.reports[-1][M.NONZERO_PARAMS] < 0.21 * resumed.reports[-1][M.PARAMS] + 300


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(splits, tmp_path):
    from distopt.orchestration.run import load_state, save_state

    cfg = load_config(None, TINY)
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    save_state(rec.states[-1], rec.files[-1], tmp_path)
    state = load_state(tmp_path)  # torch.load(weights_only=True) inside
    assert state["epoch"] == 2 and (tmp_path / "model.dopt").exists()


@pytest.mark.slow
def test_diverging_training_fails_with_the_reason(splits):
    cfg = load_config(None, TINY + ["train.lr=1e12", "train.optimizer=sgd"])
    with pytest.raises(TrainingDiverged, match="non-finite loss at epoch 0"):
        fit(cfg, WorkerEnv(), Recorder(), splits=splits)


@pytest.mark.slow
def test_l1_shrinks_weights(splits):
    norms = {}
    for l1 in (0.0, 1e-3):
        cfg = load_config(None, TINY + ["compress.prune.ratio=0", f"regularization.l1={l1}",
                                        "compress.quantize.bits=32"])
        out = fit(cfg, WorkerEnv(), Recorder(), splits=splits)
        from distopt.compress import decode

        model = decode(out["artifact"]).model
        norms[l1] = sum(m.abs().sum().item() for n, m in model.named_parameters() if "weight" in n)
    assert norms[1e-3] < 0.9 * norms[0.0]


def test_precision_resolution_explains_itself():
    model = build_model(seed_cnn())
    x = torch.randn(32, 1, 28, 28)
    assert resolve_precision("fp32", torch.device("cpu"), model, x) == ("fp32", "set in the config")
    precision, why = resolve_precision("auto", torch.device("cpu"), model, x)
    assert precision in ("fp32", "bf16") and why
    if not cpu_bf16_supported():
        assert precision == "fp32"


@pytest.mark.slow
def test_bf16_training_runs(splits):
    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    cfg = load_config(None, TINY + ["train.precision=bf16"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    assert rec.reports[-1][M.PRECISION] == "bf16"


@pytest.mark.slow
def test_mlp_family_with_structured_pruning_trains(splits):
    cfg = load_config(None, TINY + ["model.family=mlp", "model.blocks=2", "model.dense_units=64",
                                    "compress.prune.kind=structured", "compress.prune.ratio=0.5"])
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=splits)
    from distopt.compress import decode

    spec = decode(out["artifact"]).model.spec
    assert spec.family == "mlp" and spec.dense_units == (32, 32)
    assert rec.reports[-1][M.PARAMS] < 784 * 64  # physically smaller than the dense model


# ---------------------------------------------------------------- recurrent models

RNN_TINY = ["data.name=tokens-mini", "data.kind=tokens", "model.preset=seed_rnn",
            "model.hidden_size=16", "model.embed_dim=16", "train.grad_clip=1.0",
            "augment.token_dropout=0.1", "augment.crop=0.2"]


@pytest.fixture(scope="module")
def token_splits():
    return load_splits(load_config(None, RNN_TINY).data)


@pytest.mark.parametrize("cell,kind", [("gru", "structured"), ("lstm", "unstructured")])
@pytest.mark.slow
def test_rnn_on_tokens_resumes_exactly_and_reports_its_artifact(token_splits, cell, kind):
    cfg = load_config(None, TINY + RNN_TINY + ["train.epochs=3", f"model.cell={cell}",
                                               f"compress.prune.kind={kind}"])
    full = Recorder()
    out = fit(cfg, WorkerEnv(), full, splits=token_splits)
    crashed = Recorder(crash_after=1)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, WorkerEnv(), crashed, splits=token_splits)
    resumed = Recorder()
    fit(cfg, WorkerEnv(), resumed, state=crashed.states[-1], splits=token_splits)
    for a, b in zip(full.reports[2:], resumed.reports):
        assert a[M.TRAIN_LOSS] == pytest.approx(b[M.TRAIN_LOSS], rel=1e-6)
    final = full.reports[-1]
    assert resumed.reports[-1][M.SIZE_BYTES] == final[M.SIZE_BYTES]
    again = evaluate_artifact(out["artifact"], token_splits, "val")
    assert again["val_accuracy"] == pytest.approx(final[M.VAL_ACCURACY], abs=1e-9)
    from distopt.compress import decode

    dec = decode(out["artifact"])
    assert dec.meta["input"]["tokens"] is True and dec.model.spec.cell == cell
    if kind == "structured":
        assert dec.model.spec.rnn_units == (8, 8) and dec.model.spec.embed_dim == 8
    else:
        assert final[M.NONZERO_PARAMS] < 0.6 * final[M.PARAMS]


@pytest.mark.slow
def test_rnn_learns_the_generated_token_task(token_splits):
    """Real learning, not only plumbing: a small GRU reads the sequences well above chance."""
    cfg = load_config(None, RNN_TINY + ["model.cell=gru", "model.hidden_size=32",
                                        "model.embed_dim=32", "train.epochs=3", "train.lr=0.005",
                                        "compress.prune.ratio=0", "train.precision=fp32"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=token_splits)
    assert rec.reports[-1][M.VAL_ACCURACY] > 0.5  # chance is 0.1


@pytest.mark.slow
def test_sequential_mnist_rnn_trains_with_structured_pruning(splits):
    cfg = load_config(None, TINY + ["model.preset=seed_rnn", "model.hidden_size=32",
                                    "compress.prune.kind=structured"])
    out = fit(cfg, WorkerEnv(), Recorder(), splits=splits)
    from distopt.compress import decode

    assert decode(out["artifact"]).model.spec.rnn_units == (16, 16)


def test_what_cpu_autocast_does_with_recurrent_cells():
    """Pins the behaviour the README documents for bf16 on CPU with this PyTorch: the Elman
    cell and the LSTM (oneDNN) return bf16; the GRU's matrix products are autocast to bf16
    (casts at every step) but its state and output stay fp32. A PyTorch upgrade that changes
    this fails here first."""
    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16")
    x = torch.randn(4, 7, 8)
    got = {}
    for name, cls in (("rnn", torch.nn.RNN), ("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = cls(8, 16, batch_first=True)(x)
        got[name] = out.dtype
    assert got == {"rnn": torch.bfloat16, "gru": torch.float32, "lstm": torch.bfloat16}


@pytest.mark.parametrize("kind,ratio", [("unstructured", 0.5), ("structured", 0.5),
                                        ("unstructured", 0.0)])
@pytest.mark.slow
def test_batch_norm_is_folded_before_fine_tuning_and_export(splits, kind, ratio):
    cfg = load_config(None, TINY + ["model.channels=8", "model.blocks=3", "model.head=gap",
                                    "model.batch_norm=true", "model.dense_layers=0",
                                    f"compress.prune.kind={kind}",
                                    f"compress.prune.ratio={ratio}"])
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=splits)
    from distopt.compress import decode

    spec = decode(out["artifact"]).model.spec
    assert not spec.batch_norm and spec.head == "gap"
    if kind == "structured":
        assert spec.conv_channels == (4, 8, 16)
    # The reported accuracy is the decoded file's: nothing folded that the file lacks.
    again = evaluate_artifact(out["artifact"], splits, "val")
    assert again["val_accuracy"] == pytest.approx(rec.reports[-1][M.VAL_ACCURACY], abs=1e-9)
    # Fine-tuning checkpoints hold the folded model; dense ones the BatchNorm model.
    specs = [s["spec"]["batch_norm"] for s in rec.states]
    assert specs[0] is True and (specs[-1] is False if ratio else True)


@pytest.mark.slow
@pytest.mark.parametrize("prune", [[], ["compress.prune.ratio=0"]], ids=["pruned", "qat-alone"])
def test_qat_fine_tuning_validates_what_the_file_holds(splits, prune):
    """With pruning or alone (QAT opens the fine-tune itself)."""
    cfg = load_config(None, TINY + ["compress.quantize.bits=4", "compress.quantize.qat=true",
                                    "compress.finetune_epochs=2"] + prune)
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    last_finetune, final = rec.reports[-2], rec.reports[-1]
    assert last_finetune[M.PHASE] == "finetune"
    # Validation during QAT ran on the quantized weights: the decoded file scores the same.
    assert final[M.VAL_ACCURACY] == pytest.approx(last_finetune[M.VAL_ACCURACY], abs=1e-9)


@pytest.mark.slow
def test_gradual_pruning_raises_sparsity_each_fine_tune_epoch(splits):
    cfg = load_config(None, TINY + ["compress.prune.schedule=gradual", "compress.prune.ratio=0.9",
                                    "compress.finetune_epochs=3"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    kept = [sum(int(m.sum()) for m in s["masks"].values()) for s in rec.states if s["masks"]]
    assert kept[0] > kept[1] > kept[2] == kept[-1]  # the final report repeats the last state
    final = rec.reports[-1]
    assert final[M.NONZERO_PARAMS] <= 0.1 * final[M.PARAMS] + 300


def test_evaluate_artifact_refuses_files_it_cannot_evaluate_honestly(splits):
    from distopt.compress import ArtifactError, encode
    from distopt.models import ModelSpec

    no_norm = encode(build_model(seed_cnn()).eval(), 8)  # valid file, no input normalization
    with pytest.raises(ArtifactError, match="m.dopt: no valid input normalization"):
        evaluate_artifact(no_norm, splits, "test", "m.dopt")
    norm = {"input": {"scale": 1 / 255, "mean": 0.1, "std": 0.3}}
    other = encode(build_model(ModelSpec("cnn", (1, 12, 12), 10, (4,), (8,), 3)).eval(), 8,
                   norm)
    with pytest.raises(ArtifactError, match=r"takes inputs of shape \[1, 12, 12\], the data's "
                                            r"are \[1, 28, 28\]"):
        evaluate_artifact(other, splits, "test", "m.dopt")
    bad_std = encode(build_model(seed_cnn()).eval(), 8, {"input": {**norm["input"], "std": 0}})
    with pytest.raises(ArtifactError, match="no valid input normalization"):
        evaluate_artifact(bad_std, splits, "test")
    ok = encode(build_model(seed_cnn()).eval(), 8, norm)
    assert 0 <= evaluate_artifact(ok, splits, "test")["test_accuracy"] <= 1


def test_augmentation_pads_with_background_not_mean_grey():
    """A blank (black) image shifted far still reads as black after standardization: the affine
    transform runs on [0, 1] pixels, so its zero padding is the background. (Normalizing first
    padded with 0 in standardized units: mean grey, a bright frame around every shifted digit.)"""
    from distopt.config import AugmentConfig
    from distopt.runtime import InputNorm
    from distopt.training.inputs import training_batch

    norm = InputNorm(1 / 255, 0.13, 0.31)
    blank = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    out = training_batch(blank, norm, AugmentConfig(shift=0.4, rotation=30),
                         torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, -0.13 / 0.31))
    digit = blank.clone()
    digit[:, :, 10:18, 10:18] = 255
    moved = training_batch(digit, norm, AugmentConfig(shift=0.3), torch.Generator().manual_seed(1))
    assert moved.min() == pytest.approx(-0.13 / 0.31) and moved.max() > 2.5


def test_cuda_precision_follows_compute_capability_and_layer_kind():
    from distopt.training.precision import cuda_precision

    assert cuda_precision("auto", (9, 0), "H200", recurrent=False)[0] == "bf16"
    assert cuda_precision("auto", (8, 0), "A100", recurrent=False)[0] == "bf16"
    p, why = cuda_precision("auto", (7, 5), "T4", recurrent=False)
    assert p == "fp16" and "no native bf16 (needs 8.0)" in why
    p, why = cuda_precision("bf16", (7, 0), "V100", recurrent=False)
    assert p == "fp16" and why.startswith("bf16 requested, but")
    p, why = cuda_precision("auto", (9, 0), "H200", recurrent=True)
    assert p == "fp16" and "recurrent" in why
    assert cuda_precision("fp32", (7, 5), "T4", recurrent=True) == ("fp32", "set in the config")


def test_restored_masks_move_to_the_parameters_device_as_float():
    from distopt.compress.pruning import device_masks

    masks = {"w": torch.tensor([True, False])}
    moved = device_masks(masks, torch.device("meta"))
    assert moved["w"].device.type == "meta" and moved["w"].dtype == torch.float32
    assert device_masks(None, torch.device("cpu")) is None


@pytest.mark.slow
def test_resume_restores_masks_and_keeps_pruned_weights_zero(splits):
    """A checkpoint's masks come back as bool on the CPU; training resumed from it must still
    hold every pruned weight at zero (masks applied after each step)."""
    cfg = load_config(None, TINY + ["compress.finetune_epochs=2"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    state = next(s for s in rec.states if s.get("masks"))
    assert all(v.dtype == torch.bool for v in state["masks"].values())
    again = Recorder()
    fit(cfg, WorkerEnv(), again, state=state, splits=splits)
    final = again.states[-1]
    for name, mask in final["masks"].items():
        assert bool((final["model"][name][~mask] == 0).all()), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.slow
def test_resume_on_cuda_from_a_cpu_checkpoint(splits):
    cfg = load_config(None, TINY + ["compress.finetune_epochs=2", "train.use_gpu=true"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)  # masks saved on the CPU
    state = next(s for s in rec.states if s.get("masks"))
    out = fit(cfg, WorkerEnv(device=torch.device("cuda")), Recorder(), state=state,
              splits=splits)
    assert out["metrics"]["phase"] == "final"


def test_learning_rate_warms_up_linearly_then_follows_the_schedule():
    from distopt.training.optim import lr_factor

    assert [lr_factor(s, 100, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1, 1, 1]
    assert lr_factor(0, 100, 0, "cosine") == 1.0 and lr_factor(100, 100, 0, "cosine") == 0.0
    assert lr_factor(1, 100, 4, "cosine") == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 100)))
    assert lr_factor(50, 100, 4, "cosine") == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_fine_tune_follows_its_own_schedule_from_the_fine_tune_lr(splits, schedule):
    """compress.finetune_schedule: cosine takes the fine-tune's lr (lr x finetune_lr_scale)
    to 0 over the fine-tune epochs, whatever the dense schedule did; constant keeps it."""
    cfg = load_config(None, TINY + ["compress.finetune_epochs=2", "train.schedule=cosine",
                                    "train.lr=0.002", "compress.finetune_lr_scale=0.5",
                                    f"compress.finetune_schedule={schedule}"])
    rec = Recorder()
    fit(cfg, WorkerEnv(), rec, splits=splits)
    lrs = {s["epoch"]: s["optimizer"]["param_groups"][0]["lr"] for s in rec.states}
    assert lrs[1] == pytest.approx(0.0)  # the dense cosine ends at 0 after epoch 1
    if schedule == "cosine":  # 5 steps an epoch: half-way after the first fine-tune epoch
        assert lrs[2] == pytest.approx(0.001 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
        assert lrs[3] == pytest.approx(0.0)
    else:
        assert lrs[2] == lrs[3] == pytest.approx(0.001)


@pytest.mark.slow
def test_train_accuracy_is_the_decoded_models_in_eval_mode_on_a_fixed_training_subset(splits):
    """The verdict's train accuracy: no dropout, no augmentation, the same fixed subset every
    epoch; the running accuracy on augmented dropout batches is reported apart."""
    import numpy as np

    from distopt.compress import decode
    from distopt.runtime import InputNorm
    from distopt.training.evaluation import evaluate

    cfg = load_config(None, TINY + ["regularization.dropout=0.5", "augment.rotation=60",
                                    "augment.shift=0.3"])
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=splits)
    n = len(splits.x_train)
    probe = np.sort(np.random.default_rng(0).permutation(n)[:min(n, len(splits.x_val), 5000)])
    dec = decode(out["artifact"])
    expected = evaluate(dec.model, splits.x_train[probe], splits.y_train[probe],
                        InputNorm.from_meta(dec.meta["input"]), WorkerEnv(), 512).accuracy
    final = out["metrics"]
    assert final[M.TRAIN_ACCURACY] == expected
    assert final[M.GAP] == final[M.TRAIN_ACCURACY] - final[M.VAL_ACCURACY]
    epochs = [r for r in rec.reports if r[M.PHASE] != "final"]
    assert all(0 <= r[M.TRAIN_ACCURACY_RUNNING] <= 1 for r in epochs)
    assert any(r[M.TRAIN_ACCURACY_RUNNING] != r[M.TRAIN_ACCURACY] for r in epochs)


def test_plateau_says_stop_after_patience_epochs_without_improvement():
    from distopt.training.plateau import Plateau

    p = Plateau(2)
    assert [p.update(v) for v in (0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7)] == \
        [False, False, False, True, False, False, True]
    off = Plateau(0)
    assert [off.update(0.5) for _ in range(5)] == [False] * 5


@pytest.mark.slow
def test_early_stopping_ends_dense_training_on_a_plateau_and_resumes_into_fine_tuning(splits):
    # An lr so small that no prediction changes: validation accuracy is flat from epoch 0, so
    # with patience 2 dense training ends after epoch 2 (best at 0, no gain at 1 and 2).
    base = TINY + ["train.epochs=6", "train.lr=1e-12"]
    rec = Recorder()
    fit(load_config(None, base + ["train.early_stop_patience=2"]), WorkerEnv(), rec,
        splits=splits)
    assert [r[M.PHASE] for r in rec.reports] == ["train"] * 3 + ["finetune", "final"]
    assert rec.reports[-1][M.DENSE_EPOCHS] == 3 and rec.reports[-1][M.EARLY_STOPPED]
    # Patience 0 (the default) trains every epoch.
    rec = Recorder()
    fit(load_config(None, base), WorkerEnv(), rec, splits=splits)
    assert [r[M.PHASE] for r in rec.reports] == ["train"] * 6 + ["finetune", "final"]
    assert rec.reports[-1][M.DENSE_EPOCHS] == 6 and not rec.reports[-1][M.EARLY_STOPPED]
    # The checkpoint of the epoch that stopped dense training resumes into pruning.
    crashed = Recorder(crash_after=2)
    cfg = load_config(None, base + ["train.early_stop_patience=2"])
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, WorkerEnv(), crashed, splits=splits)
    resumed = Recorder()
    fit(cfg, WorkerEnv(), resumed, state=crashed.states[-1], splits=splits)
    assert [(r[M.EPOCH], r[M.PHASE]) for r in resumed.reports] == [(3, "finetune"), (3, "final")]
    assert resumed.reports[-1][M.EARLY_STOPPED]


@pytest.mark.slow
def test_expected_size_at_a_rung_is_what_the_weights_then_would_export(splits):
    """mo_asha ranks size at a rung by the artifact the trial would export then. Without a
    fine-tune the last dense epoch's expected size is the final file's size exactly; with
    pruning and a fine-tune only the values' compressibility changes (within 3% here)."""
    base = TINY + ["search.scheduler=mo_asha", "train.epochs=2"]
    rec = Recorder()
    fit(load_config(None, base + ["compress.prune.ratio=0"]), WorkerEnv(), rec, splits=splits)
    dense = [r for r in rec.reports if r[M.PHASE] == "train"]
    assert len(dense) == 2 and all(r[M.EXPECTED_SIZE_BYTES] > 0 for r in dense)
    assert dense[-1][M.EXPECTED_SIZE_BYTES] == rec.reports[-1][M.SIZE_BYTES]
    for bits, kind in ((4, "unstructured"), (8, "structured")):
        rec = Recorder()
        fit(load_config(None, base + [f"compress.quantize.bits={bits}",
                                      f"compress.prune.kind={kind}"]), WorkerEnv(), rec,
            splits=splits)
        at_rung = [r for r in rec.reports if r[M.PHASE] == "train"][-1]
        expected, final = at_rung[M.EXPECTED_SIZE_BYTES], rec.reports[-1][M.SIZE_BYTES]
        assert abs(final / expected - 1) < 0.03, (bits, kind, expected, final)
        # The device's costs do not depend on the fine-tuned values: exact at the rung.
        for k in (M.FLASH_BYTES, M.WEIGHT_FLASH_BYTES, M.PEAK_RAM_BYTES, M.MACS):
            assert at_rung[M.RUNG_KEYS[k]] == rec.reports[-1][k] > 0, (bits, kind, k)
    # Under FIFO nothing ranks trials at rungs: no encoding per epoch.
    rec = Recorder()
    fit(load_config(None, TINY), WorkerEnv(), rec, splits=splits)
    assert all(math.isnan(r[M.EXPECTED_SIZE_BYTES]) for r in rec.reports)


@pytest.mark.slow
def test_pruning_without_fine_tune_epochs_still_prunes_the_artifact(splits):
    """compress.finetune_epochs=0 is one-shot pruning: the file holds the pruned weights (it
    once exported the dense model, because pruning ran only at the first fine-tune epoch)."""
    cfg = load_config(None, TINY + ["compress.prune.ratio=0.8", "compress.finetune_epochs=0"])
    assert cfg.compress.prune.ratio > 0 and not cfg.compress.fine_tunes
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=splits)
    assert [r[M.PHASE] for r in rec.reports] == ["train", "train", "final"]
    final = out["metrics"]
    assert final[M.NONZERO_PARAMS] < 0.21 * final[M.PARAMS] + 300


@pytest.mark.slow
def test_conv1d_learns_the_generated_signals_through_pruning_and_the_artifact():
    """The 1-D family end to end: trains on signals-mini, is weight-pruned and quantized, and
    its decoded artifact classifies well above chance (1/6)."""
    cfg = load_config(None, ["data.name=signals-mini", "data.shape=[3,1,128]",
                             "data.num_classes=6", "model.family=conv1d", "model.channels=8",
                             "model.blocks=3", "model.kernel_size=7", "model.dense_units=32",
                             "train.epochs=3", "train.max_steps_per_epoch=40",
                             "train.precision=fp32", "augment.shift=0.05",
                             "compress.prune.ratio=0.5", "compress.finetune_epochs=1",
                             "compress.quantize.bits=8"])
    splits = load_splits(cfg.data)
    out = fit(cfg, WorkerEnv(), Recorder(), splits=splits, evaluate_test=True)
    final = out["metrics"]
    assert final[M.VAL_ACCURACY] > 0.5 and final[M.TEST_ACCURACY] > 0.5  # 3x chance
    assert final[M.NONZERO_PARAMS] < 0.6 * final[M.PARAMS]
    from distopt.compress import decode

    assert decode(out["artifact"]).model.spec.family == "conv1d"


CHILD_SPACE = ["search.space={compress.prune.ratio: {low: 0.0, high: 0.9}, "
               "compress.quantize.bits: {choices: [4, 8]}, compress.prune.kind: "
               "{choices: [unstructured, structured]}}", "search.children=3"]


@pytest.mark.slow
def test_children_are_the_runs_they_replace_with_the_dense_model_trained_once(splits):
    """Train once, compress many: each child's file is byte for byte the file a separate run
    of its settings exports, while its dense epochs ran once."""
    cfg = load_config(None, TINY + CHILD_SPACE)
    children = child_configs(cfg)
    assert len(children) == 3
    rec = Recorder()
    out = fit(cfg, WorkerEnv(), rec, splits=splits, children=children)
    assert [r[M.PHASE] for r in rec.reports] == ["train", "train", "finetune", "final"]
    files = rec.files[-1]
    assert sorted(files) == ["child_0.dopt", "child_1.dopt", "child_2.dopt", M.METRICS_FILE,
                             "model.dopt"]
    assert json.loads(files[M.METRICS_FILE])[M.SIZE_BYTES] == len(files["model.dopt"])
    records = json.loads(rec.reports[-1][M.CHILDREN])
    assert records == json.loads(json.dumps(out["children"]))
    for (values, child_cfg), record in zip(children, records):
        assert record["params"] == values
        solo = fit(child_cfg, WorkerEnv(), Recorder(), splits=splits)
        assert files[record["file"]] == solo["artifact"]
        assert record["metrics"][M.SIZE_BYTES] == len(solo["artifact"])
        assert record["metrics"][M.VAL_ACCURACY] == solo["metrics"][M.VAL_ACCURACY]
    # The parent's time covers its children's.
    assert rec.reports[-1][M.TRAIN_SECONDS] > max(r["metrics"][M.TRAIN_SECONDS] for r in records)


@pytest.mark.slow
def test_children_of_a_run_resumed_inside_fine_tuning_fork_from_the_dense_weights(splits):
    cfg = load_config(None, TINY + CHILD_SPACE + ["compress.finetune_epochs=2"])
    children = child_configs(cfg)
    full = Recorder()
    fit(cfg, WorkerEnv(), full, splits=splits, children=children)
    crashed = Recorder(crash_after=2)  # the first fine-tune epoch: the weights are pruned
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, WorkerEnv(), crashed, splits=splits, children=children)
    state = crashed.states[-1]
    assert state["masks"] is not None and state["dense_model"] is not None
    resumed = Recorder()
    fit(cfg, WorkerEnv(), resumed, state=state, splits=splits, children=children)
    # The parent's file and every child's (their metrics differ: resumed_from_epoch, times).
    dopt = [{k: v for k, v in r.files[-1].items() if k.endswith(".dopt")} for r in (resumed, full)]
    assert dopt[0] == dopt[1] and len(dopt[0]) == 1 + len(children)


@pytest.mark.slow
def test_mixed_bit_widths_reach_the_file_and_qat_trains_each_at_its_own(splits):
    cfg = load_config(None, TINY + ["compress.quantize.bits=4", "compress.quantize.bits_first_conv=8",
                                    "compress.quantize.bits_classifier=16", "compress.quantize.qat=true"])
    out = fit(cfg, WorkerEnv(), Recorder(), splits=splits)
    from distopt.compress import decode

    bits = {e["name"]: e["bits"] for e in decode(out["artifact"]).tensors}
    assert bits == {"features.0.weight": 8, "features.0.bias": 32, "features.3.weight": 4,
                    "features.3.bias": 32, "classifier.2.weight": 4, "classifier.2.bias": 32,
                    "classifier.5.weight": 16, "classifier.5.bias": 32}
    uniform = fit(load_config(None, TINY + ["compress.quantize.bits=4", "compress.quantize.qat=true"]),
                  WorkerEnv(), Recorder(), splits=splits)
    assert len(uniform["artifact"]) < len(out["artifact"])


def _kl_to(teacher_bytes: bytes, student_bytes: bytes, splits, temperature: float) -> float:
    """KL(teacher || student) of their softened predictions on the validation set."""
    from distopt.compress import decode

    norm = InputNorm.from_meta(decode(teacher_bytes).meta["input"])
    x = norm(torch.from_numpy(splits.x_val))
    with torch.no_grad():
        t = torch.log_softmax(decode(teacher_bytes).model(x) / temperature, 1)
        s = torch.log_softmax(decode(student_bytes).model(x) / temperature, 1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


@pytest.mark.slow
def test_distillation_pulls_the_student_toward_its_teacher(splits, tmp_path):
    teacher = fit(load_config(None, TINY + ["compress.prune.ratio=0", "compress.quantize.bits=32",
                                            "train.max_steps_per_epoch=30"]),
                  WorkerEnv(), Recorder(), splits=splits)["artifact"]
    (tmp_path / "teacher.dopt").write_bytes(teacher)
    student = TINY + ["model.channels=4", "model.dense_units=16", "compress.prune.ratio=0",
                      "compress.quantize.bits=32", "train.max_steps_per_epoch=60"]
    plain = fit(load_config(None, student), WorkerEnv(), Recorder(), splits=splits)
    taught = fit(load_config(None, student + ["train.distill_alpha=1.0",
                                              "train.distill_temperature=2.0",
                                              f"train.teacher_path={tmp_path / 'teacher.dopt'}"]),
                 WorkerEnv(), Recorder(), splits=splits)
    # alpha 1: the student learns only the teacher's softened predictions (T = 2), and ends
    # closer to them than the same student trained on the labels (measured: 0.69x).
    assert _kl_to(teacher, taught["artifact"], splits, 2.0) < \
        0.8 * _kl_to(teacher, plain["artifact"], splits, 2.0)


def test_a_teacher_of_other_data_is_refused(splits, tmp_path):
    from distopt.compress import encode
    from distopt.models import seed_cnn

    (tmp_path / "t.dopt").write_bytes(encode(build_model(seed_cnn()), 32, {
        "input": {"scale": 1 / 255, "mean": 0.1, "std": 0.3}, "data_digest": "other"}))
    cfg = load_config(None, TINY + ["train.distill_alpha=0.5",
                                    f"train.teacher_path={tmp_path / 't.dopt'}"])
    with pytest.raises(ValueError, match="was trained on data 'other'"):
        fit(cfg, WorkerEnv(), Recorder(), splits=splits)


@pytest.mark.slow
def test_a_resized_model_trains_exports_and_deploys_on_stored_images(splits, tmp_path):
    import distopt
    from distopt.compress import decode

    cfg = load_config(None, TINY + ["data.resize=16", "train.max_steps_per_epoch=30"])
    out = fit(cfg, WorkerEnv(), Recorder(), splits=splits, evaluate_test=True)
    decoded = decode(out["artifact"])
    assert decoded.model.spec.in_shape == (1, 16, 16) and decoded.meta["input"]["size"] == [16, 16]
    assert splits.x_test.shape[1:] == (1, 28, 28)  # the data stays as stored
    again = evaluate_artifact(out["artifact"], splits, "test")
    assert again[M.TEST_ACCURACY] == out["metrics"][M.TEST_ACCURACY] > 0.3
    (tmp_path / "m.dopt").write_bytes(out["artifact"])
    with torch.no_grad():
        logits = distopt.load(tmp_path / "m.dopt")(splits.x_test)
    assert float((logits.argmax(1).numpy() == splits.y_test).mean()) == again[M.TEST_ACCURACY]


@pytest.mark.slow
def test_a_run_adopts_the_stored_dense_model_of_its_dense_configuration(splits, tmp_path):
    """Train once, compress many, across trials: a run whose config differs from a stored one
    only in compress.* trains no dense epoch, reports the stored dense epochs again (marked with
    their trial; at a rung, the size of its own compression of them), and exports byte for
    byte the file a run training its own dense model exports. Other dense settings miss."""
    from distopt.training.dense_store import DenseStore

    rungs = ["search.scheduler=mo_asha", "search.grace_epochs=1"]
    first = load_config(None, TINY + rungs + ["compress.quantize.bits=8"])
    fit(first, WorkerEnv(), Recorder(), splits=splits, dense_store=DenseStore(str(tmp_path), "t1"))
    assert len(list(tmp_path.glob("*.pt"))) == 1

    second = load_config(None, TINY + rungs + ["compress.quantize.bits=4",
                                                "compress.prune.ratio=0.8"])
    assert dense_key(second) == dense_key(first)
    rec = Recorder()
    out = fit(second, WorkerEnv(), rec, splits=splits, dense_store=DenseStore(str(tmp_path), "t2"))
    solo_rec = Recorder()
    solo = fit(second, WorkerEnv(), solo_rec, splits=splits)
    assert out["artifact"] == solo["artifact"]
    assert out["metrics"][M.DENSE_FROM] == "t1" and solo["metrics"][M.DENSE_FROM] == ""
    dense = [r for r in rec.reports if r[M.PHASE] == "train"]
    solo_dense = [r for r in solo_rec.reports if r[M.PHASE] == "train"]
    assert [(r[M.EPOCH], r[M.VAL_ACCURACY]) for r in dense] == \
        [(r[M.EPOCH], r[M.VAL_ACCURACY]) for r in solo_dense]
    # Rung sizes: this run's compression of the weights it adopted (the last dense epoch's).
    assert {r[M.EXPECTED_SIZE_BYTES] for r in dense} == {solo_dense[-1][M.EXPECTED_SIZE_BYTES]}
    assert all(r[M.DENSE_FROM] == "t1" for r in dense)
    # The adopting run's checkpoints resume like any: a crash in its fine-tune loses nothing.
    crashed = Recorder(crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        fit(second, WorkerEnv(), crashed, splits=splits,
            dense_store=DenseStore(str(tmp_path), "t3"))
    resumed = fit(second, WorkerEnv(), Recorder(), state=crashed.states[-1], splits=splits,
                  dense_store=DenseStore(str(tmp_path), "t3"))
    assert resumed["artifact"] == solo["artifact"] and resumed["metrics"][M.DENSE_FROM] == "t1"

    other = load_config(None, TINY + rungs + ["compress.quantize.bits=4", "train.seed=1"])
    assert dense_key(other) != dense_key(first)
    out = fit(other, WorkerEnv(), Recorder(), splits=splits,
              dense_store=DenseStore(str(tmp_path), "t4"))
    assert out["metrics"][M.DENSE_FROM] == "" and len(list(tmp_path.glob("*.pt"))) == 2


@pytest.mark.parametrize("bf16_ms, expected", [(5.0, "bf16"), (9.5, "fp32")])
def test_cpu_precision_is_bf16_only_where_a_measured_step_is_faster(monkeypatch, bf16_ms,
                                                                    expected):
    """auto on a CPU with bf16: bf16 when its step is under 90% of fp32's (10 ms here)."""
    from distopt.training import precision as P

    monkeypatch.setattr(P, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(P, "_time_steps", lambda model, x, dtype, n=6:
                        (bf16_ms if dtype is torch.bfloat16 else 10.0) / 1e3)
    choice, why = P.resolve_precision("auto", torch.device("cpu"), torch.nn.Linear(2, 2),
                                      torch.zeros(1, 2))
    assert choice == expected, why


@pytest.mark.slow
def test_an_integer_run_reports_its_integer_reference_and_resumes_to_the_same_file(splits):
    """activation_bits 8: the grids are calibrated and trained for (QAT), the file holds them,
    every reported accuracy is the integer reference's, the rung's device costs are the
    file's (int8 RAM, integer flash), and a run resumed inside the fine-tune writes the same
    file (the grids are in the checkpoint)."""
    import copy

    from distopt.compress import decode, device_report
    from distopt.compress.integer import META_KEY

    cfg = load_config(None, TINY + ["compress.quantize.bits=4", "compress.quantize.qat=true",
                                    "compress.quantize.activation_bits=8",
                                    "compress.finetune_epochs=2", "search.scheduler=mo_asha"])
    rec = Recorder()
    states: list[dict] = []
    out = fit(cfg, WorkerEnv(), lambda m, s, f=None: (rec(m, s, f),
                                                      states.append(copy.deepcopy(s))),
              splits=splits)
    dec = decode(out["artifact"])
    assert dec.integer is not None and len(dec.meta[META_KEY]["scale"]) == 5  # in, 4 layers
    final = out["metrics"]
    assert final[M.VAL_ACCURACY] == pytest.approx(
        evaluate_artifact(out["artifact"], splits, "val")["val_accuracy"], abs=1e-12)
    # The last QAT epoch validated through the same grids (fake quantization): close.
    assert abs(rec.reports[-2][M.VAL_ACCURACY] - final[M.VAL_ACCURACY]) <= 0.03
    device = device_report(dec)
    rung = [r for r in rec.reports if r[M.PHASE] == "train"][-1]
    for key in (M.FLASH_BYTES, M.PEAK_RAM_BYTES, M.MACS):
        assert final[key] == device[key] == rung[M.RUNG_KEYS[key]], key
    first_finetune = next(s for s, r in zip(states, rec.reports) if r[M.PHASE] == "finetune")
    assert first_finetune["activation_grids"]
    again = fit(cfg, WorkerEnv(), lambda m, s, f=None: None, state=first_finetune,
                splits=splits)
    assert again["artifact"] == out["artifact"]
