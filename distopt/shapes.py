"""Feature-map geometry of conv blocks, shared by the models, the config's checks and the
artifact's decoder (which validates a spec before building anything). No torch here, so the
config can check shapes before the expensive imports.
"""

from __future__ import annotations

__all__ = ["BLOCKS", "conv_out_side"]

BLOCKS = ("plain", "same", "separable", "depthwise")


def conv_out_side(h: int, w: int, blocks: int, kernel: tuple[int, int], pool: tuple[int, int],
                  block: str) -> tuple[int, int]:
    """Height and width after ``blocks`` conv blocks: a 'valid' conv (``plain``) takes
    ``k - 1`` off each side, a 'same' one (``same``, ``separable``, ``depthwise``) nothing; each block then
    max-pools."""
    (kh, kw), (ph, pw) = kernel, pool
    shrink = block == "plain"
    for _ in range(blocks):
        h = (h - (kh - 1) * shrink) // ph
        w = (w - (kw - 1) * shrink) // pw
    return h, w
