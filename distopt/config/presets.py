"""Named architectures (``model.preset``): the model keys each stands for; keys given beside
a preset override it."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    # Keras' classic mnist_cnn: Conv32-Conv64 (3x3 valid, each + max-pool 2), Dense128: 225,034.
    "seed_cnn": {"family": "cnn", "channels": 32, "blocks": 2, "dense_units": 128,
                 "dense_layers": 1, "kernel_size": 3},
    # Deep Compression's LeNet-300-100: 784 -> 300 -> 100 -> 10 (266,610 parameters).
    "lenet_300_100": {"family": "mlp", "blocks": 2, "dense_units": 300, "dense_taper": 0.334},
    # The seed's Keras RNN: Embedding(5000, 128) -> SimpleRNN(128, return_sequences=True) ->
    # SimpleRNN(128) -> Dense(10). On images (sequential MNIST) there is no embedding.
    "seed_rnn": {"family": "rnn", "cell": "rnn", "blocks": 2, "hidden_size": 128,
                 "embed_dim": 128, "dense_layers": 0},
}
