"""Model families as plain PyTorch modules; nothing here knows of training, Ray or Optuna.

- :mod:`.spec`: :class:`ModelSpec`, the concrete architecture a file stores;
- :mod:`.family`: the :class:`Family` plug-in protocol and registry (``model.family``);
- :mod:`.convnet` (``cnn``, ``conv1d``, ``mlp``), :mod:`.recurrent` (``rnn``),
  :mod:`.recsys` (``recsys``: embedding tables for tabular rows),
  :mod:`.external` (your own, ``package.module:Factory``): the registered families;
- :mod:`.weights`: what compression walks in any model; :mod:`.batchnorm`: BN folding.
"""

from distopt.models.spec import ModelSpec
from distopt.models.family import (FAMILIES, Family, build_model, family_of, register_family,
                                   spec_from_config)
from distopt.models.convnet import Net, dense_head, seed_cnn
from distopt.models.recurrent import CELLS, GATES, RecurrentNet, seed_rnn
from distopt.models.recsys import PairwiseDot, RecsysNet, fold_ids
from distopt.models.external import ExternalFamily
from distopt.models.batchnorm import fold_batch_norm
from distopt.models.weights import count_params, example_input, layer_kinds, prunable_weights

# What compression, training and export take (a user family's module is any nn.Module
# carrying a ``spec``; typed as the built-in ones).
Model = Net | RecurrentNet | RecsysNet

__all__ = ["CELLS", "ExternalFamily", "FAMILIES", "Family", "GATES", "Model", "ModelSpec",
           "Net", "PairwiseDot", "RecsysNet", "RecurrentNet", "fold_ids", "build_model", "count_params", "dense_head", "example_input",
           "family_of", "fold_batch_norm", "layer_kinds", "prunable_weights",
           "register_family", "seed_cnn", "seed_rnn", "spec_from_config"]
