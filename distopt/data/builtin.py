"""The data sets distopt ships or makes in code, for examples, tests and CI offline: the
embedded MNIST subset (``mnist-mini``), generated token sequences (``tokens-mini``) and generated
1-D signals (``signals-mini``)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distopt.config import SIGNALS_CLASSES, SIGNALS_SHAPE
from distopt.data.parquet import pad_tokens
from distopt.data.splits import DataError

__all__ = ["MINI_FILE", "generate_signals", "generate_tokens", "load_mini", "mini_path"]

MINI_FILE = "mnist_mini.parquet"


# Sizes of the generated token dataset (tokens-mini).
TOKENS_MINI_TRAIN, TOKENS_MINI_TEST = 10_000, 2_000


def generate_tokens(n: int, vocab_size: int, max_len: int, num_classes: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic text-classification set that can only be learned by reading the tokens.

    Ids ``1 .. num_classes * T`` are split into ``num_classes`` topics of ``T`` ids each
    (``T = 16``, fewer if the vocabulary is small); all other ids are topic-free filler. Every sequence
    has a random length in ``[max_len / 2, max_len]`` of filler, into which ``k`` ids of its
    label's topic (k uniform in 3..6) and ``j < k`` ids of one other topic are placed at random
    positions. The label is the topic with the most ids: length, position and filler carry no
    information, and a distractor topic is always present, so a model has to recognise the
    topic ids and count them."""
    rng = np.random.default_rng(seed)
    per_topic = max(1, min(16, (vocab_size - 1) // (2 * num_classes)))
    first_filler = 1 + num_classes * per_topic
    if first_filler >= vocab_size or max_len < 12:
        raise DataError(f"tokens-mini: vocab_size {vocab_size} and max_len {max_len} are too "
                        f"small for {num_classes} topics (need vocab_size > "
                        f"{first_filler} and max_len >= 12)")
    y = rng.integers(0, num_classes, n)
    other = (y + rng.integers(1, num_classes, n)) % num_classes
    seqs = []
    for label, distractor in zip(y, other):
        k = int(rng.integers(3, 7))
        j = int(rng.integers(1, k))
        length = int(rng.integers(max(max_len // 2, k + j), max_len + 1))
        s = rng.integers(first_filler, vocab_size, length)
        pos = rng.choice(length, k + j, replace=False)
        s[pos[:k]] = 1 + label * per_topic + rng.integers(0, per_topic, k)
        s[pos[k:]] = 1 + distractor * per_topic + rng.integers(0, per_topic, j)
        seqs.append(s)
    return pad_tokens(seqs, max_len), y.astype(np.int64)


# Sizes of the generated 1-D signal dataset (signals-mini).
SIGNALS_MINI_TRAIN, SIGNALS_MINI_TEST = 6_000, 2_000


def generate_signals(n: int, seed: int, length: int = SIGNALS_SHAPE[2]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic sensor set: ``n`` float32 signals ``(3, 1, length)`` in 6 classes, where
    the class is in the *shape* of a waveform, not in its level or position.

    Every signal is Gaussian noise (sigma 0.6) plus a random offset per channel, plus a
    low-amplitude distractor sine on every channel (random frequency and phase), plus the
    class's waveform on one channel, with random amplitude (0.6-1.4), phase and onset:
    0 slow sine (1-2.5 cycles) and 1 fast sine (5-8 cycles) on channel 0; 2 square wave and
    3 rising chirp on channel 1; 4 two to four short Gaussian bursts and 5 sawtooth on
    channel 2. Pairs on one channel differ in frequency or waveform only, so a model must
    read local temporal structure; the noise keeps a perfect score out of reach."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64) / length
    y = rng.integers(0, SIGNALS_CLASSES, n)
    x = rng.normal(0.0, 0.6, (n, 3, length)) + rng.normal(0.0, 0.5, (n, 3, 1))
    freq = rng.uniform(0.5, 10.0, (n, 3, 1))
    x += 0.3 * np.sin(2 * np.pi * (freq * t + rng.uniform(0, 1, (n, 3, 1))))
    amp = rng.uniform(0.6, 1.4, n)
    phase = rng.uniform(0, 1, n)
    for i, label in enumerate(y):
        if label in (0, 1):
            f = rng.uniform(1.0, 2.5) if label == 0 else rng.uniform(5.0, 8.0)
            wave = np.sin(2 * np.pi * (f * t + phase[i]))
        elif label == 2:
            wave = np.sign(np.sin(2 * np.pi * (rng.uniform(2.0, 4.0) * t + phase[i])))
        elif label == 3:
            f0 = rng.uniform(1.0, 3.0)
            wave = np.sin(2 * np.pi * (f0 * t + rng.uniform(4.0, 7.0) * t ** 2 + phase[i]))
        elif label == 4:
            wave = np.zeros(length)
            for c in rng.uniform(0.05, 0.95, int(rng.integers(2, 5))):
                wave += 2.0 * np.exp(-0.5 * ((t - c) / 0.015) ** 2)
        else:
            wave = 2.0 * ((rng.uniform(2.0, 4.0) * t + phase[i]) % 1.0) - 1.0
        x[i, label // 2] += amp[i] * wave
    return x.astype(np.float32).reshape(n, 3, 1, length), y.astype(np.int64)


def mini_path() -> Path:
    return Path(str(resources.files("distopt") / "_data" / MINI_FILE))


def load_mini() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The embedded class-stratified MNIST subset, verified against its recorded digest."""
    path = mini_path()
    meta = json.loads((path.parent / "mnist_mini.json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != meta["sha256"]:
        raise DataError(f"{path}: checksum mismatch (SHA-256 {digest}, expected "
                        f"{meta['sha256']}); reinstall distopt")
    table = pq.read_table(path)
    split = table.column("split").to_numpy(zero_copy_only=False)
    x = table.column("image").combine_chunks().flatten().to_numpy().reshape(-1, 1, 28, 28)
    y = table.column("label").to_numpy().astype(np.int64)
    tr, te = split == "train", split == "test"
    return x[tr], y[tr], x[te], y[te]


