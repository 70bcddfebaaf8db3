"""A config's words for tables and logs, as stored by any version."""

from __future__ import annotations

from typing import Any, Mapping

from distopt.config.parse import canonical_raw
from distopt.config.sections import CompressConfig, QuantizeConfig

__all__ = ["bits_text"]


def bits_text(compress: Mapping[str, Any]) -> str:
    """A ``compress`` section's weight bits for tables (either layout, as stored by any
    version): ``"4"``, or with mixed widths ``"4 (first_conv 8, classifier 8)"``; ``" a8"``
    after them for an integer model (8-bit activations), ``" per-tensor"`` for one scale a
    tensor, ``" odd"`` for levels without a zero."""
    q = canonical_raw(CompressConfig, compress).get("quantize") or {}
    mixed = [f"{k.removeprefix('bits_')} {q[k]}" for k in
             ("bits_first_conv", "bits_conv", "bits_dense", "bits_last_dense", "bits_classifier",
              "bits_embedding")
             if q.get(k) is not None]
    acts = (f" a{q['activation_bits']}" if q.get("activation_bits") else "") + \
        (" per-tensor" if q.get("scales") == "tensor" else "") + \
        (" odd" if q.get("odd_levels") else "")
    return f"{q.get('bits', QuantizeConfig.bits)}" + (f" ({', '.join(mixed)})" if mixed else "") \
        + acts
