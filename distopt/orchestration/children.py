"""Train once, compress many: the compression settings a search trial forks from its own dense
model (``search.children``), drawn from the search space's ``compress.*`` entries. Decided here,
where the trial reads them; no Ray in this module."""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

from distopt.config import Config, ConfigError, field_info
from distopt.config.parse import get_dotted, legacy_raw
from distopt.config.space import draw

__all__ = ["SEED_NEUTRAL_DEFAULTS", "child_configs"]

# Config keys added after search.children existed, with their defaults: the children's seed
# leaves them out while they hold these values (so adding a key changes no earlier search).
# Named as the seed reads them: in the layout of that time (distopt.config.parse.legacy_raw).
SEED_NEUTRAL_DEFAULTS: dict[str, Any] = {"compress.clusters": 0, "search.constraints": {},
                                         "compress.quantize.activation_bits": None,
                                         "search.keep_extremes": True,
                                         "search.unstopped_share": 0.0,
                                         "search.final.epochs": None,
                                         "search.final.select.budgets": [],
                                         "search.final.select.metric": "size_bytes",
                                         "augment.prob": 1.0, "model.bias": True,
                                         "data.categorical_columns": [],
                                         "data.numeric_columns": [], "data.num_buckets": 1000,
                                         "data.column_buckets": {},
                                         "model.buckets": 1000, "model.interaction": "mlp",
                                         "compress.quantize.bits_embedding": None,
                                         "compress.prune_rows.ratio": 0.0,
                                         "compress.finetune_schedule": "constant",
                                         "compress.quantize.scales": "channel",
                                         "compress.quantize.bits_last_dense": None,
                                         "compress.quantize.odd_levels": False,
                                         "model.dense_taper": 1.0}


def child_configs(cfg: Config) -> list[tuple[dict[str, Any], Config]]:
    """The compression settings a search trial of this config forks from its dense model
    (``search.children``): that many value sets of the space's ``compress.*`` keys, drawn
    uniformly from their ranges and choices, none equal to this config's own or to each
    other, each with its validated config (draws that make the config invalid, such as
    QAT at 32 bits, are skipped). Seeded by ``search.seed`` and this config, so every rank
    and every restart of a trial draws the same; the one place children are decided."""
    keys = [k for k in cfg.search.space if k.startswith("compress.")]
    if not cfg.search.children or not keys:
        return []
    raw = cfg.to_dict()
    own = {k: get_dotted(raw, k) for k in keys}
    # Keys added to the schema since children were introduced count only when set, and the
    # seed reads the layout of that time (old key names), so a config draws the same
    # children as before the schema grew or moved.
    seeded = legacy_raw(Config, raw)
    for key, default in SEED_NEUTRAL_DEFAULTS.items():
        *path, leaf = key.split(".")
        parents = [seeded]
        for part in path:
            parents.append(parents[-1].get(part) if isinstance(parents[-1], dict) else None)
        if isinstance(parents[-1], dict) and leaf in parents[-1] and \
                parents[-1][leaf] == default:
            del parents[-1][leaf]
            for part, parent in zip(reversed(path), reversed(parents[:-1])):
                if parent[part] == {}:  # a section that held only new keys
                    del parent[part]
    digest = zlib.crc32(json.dumps(seeded, sort_keys=True, default=str).encode())
    rng = random.Random(cfg.search.seed * 1_000_003 + digest)
    seen, out = {repr(sorted(own.items()))}, []
    for _ in range(20 * cfg.search.children):
        if len(out) == cfg.search.children:
            break
        values = {k: draw(cfg.search.space[k], field_info(k)[0], rng) for k in keys}
        if repr(sorted(values.items())) in seen:
            continue
        seen.add(repr(sorted(values.items())))
        try:
            out.append((values, cfg.with_overrides(values)))
        except ConfigError:
            continue
    return out
