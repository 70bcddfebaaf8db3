"""Datasets as numpy arrays: the embedded MNIST subset, full MNIST (local or downloaded with
checksums), generated token sequences and signals, and bring-your-own Parquet.

Every worker loads its data itself (no Ray Data: its read tasks need free CPUs and deadlock when
trial workers hold every CPU of a small machine) and takes a strided shard by rank.
"""

from distopt.data.builtin import generate_signals, generate_tokens, load_mini, mini_path
from distopt.data.checks import check_parquet_data
from distopt.data.load import load_splits
from distopt.data.mnist import MNIST_FILES, fetch_mnist, load_mnist_arrays, parse_idx, read_idx
from distopt.data.parquet import pad_tokens, read_parquet_arrays, read_parquet_tokens
from distopt.data.splits import DataError, Splits, shard

__all__ = ["DataError", "MNIST_FILES", "Splits", "check_parquet_data", "fetch_mnist",
           "generate_signals", "generate_tokens", "load_mini", "load_mnist_arrays",
           "load_splits", "mini_path", "pad_tokens", "parse_idx", "read_idx",
           "read_parquet_arrays", "read_parquet_tokens", "shard"]
