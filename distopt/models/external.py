"""The user's own family (``model.family: package.module:Factory``, :mod:`distopt.user_models`):
the factory builds the module from the config's model section; the spec records the factory's
path and options, so a file rebuilds it where that path is trusted."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import nn

from distopt.models.family import Family, register_family
from distopt.models.spec import ModelSpec
from distopt.user_models import load_factory

if TYPE_CHECKING:
    from distopt.config import Config

__all__ = ["ExternalFamily"]


@register_family
class ExternalFamily(Family):
    name = "external"

    def spec(self, cfg: Config) -> ModelSpec:
        m, d = cfg.model, cfg.data
        options = {k: v for k, v in dataclasses.asdict(m).items() if k not in ("family", "preset")}
        options["dropout"] = cfg.regularization.dropout
        tokens = d.kind == "tokens"
        spec = ModelSpec.external(m.family, (d.max_len,) if tokens else
                                  tuple(int(v) for v in d.model_shape), d.num_classes, options)
        # Token ids in: the spec says so (example inputs, latency, exports take integers).
        return dataclasses.replace(spec, vocab_size=d.vocab_size, embed_dim=1) if tokens \
            else spec

    def build(self, spec: ModelSpec) -> nn.Module:
        """The user's model, with ``spec`` attached as the built-in families carry theirs (the
        artifact stores it; decoding rebuilds from it)."""
        model = load_factory(spec.factory)(dict(spec.options), tuple(spec.in_shape),
                                           spec.num_classes)
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec.factory} returned a {type(model).__name__}, not a "
                            "torch.nn.Module")
        model.spec = spec
        return model
