"""Feature-map geometry of conv blocks, shared by the models, the config's checks and the
artifact's decoder (which validates a spec before building anything). No torch here, so the
config can check shapes before the expensive imports.
"""

from __future__ import annotations

__all__ = ["BLOCKS", "conv_out_side"]

BLOCKS = ("plain", "same", "separable", "depthwise", "bitnet")
VALID = ("plain", "bitnet")  # block kinds whose convs are unpadded ('valid')


def conv_out_side(h: int, w: int, blocks: int, kernel: tuple[int, int], pool: tuple[int, int],
                  block: str) -> tuple[int, int]:
    """Height and width after ``blocks`` conv blocks: a 'valid' conv (``plain``, ``bitnet``)
    takes ``k - 1`` off each side, a 'same' one (``same``, ``separable``, ``depthwise``)
    nothing; each block then max-pools, but the first ``bitnet`` block (BitNetMCU's CNN
    pools after its second and third convs)."""
    (kh, kw), (ph, pw) = kernel, pool
    shrink = block in VALID
    for i in range(blocks):
        pooled = not (block == "bitnet" and i == 0)
        h = (h - (kh - 1) * shrink) // (ph if pooled else 1)
        w = (w - (kw - 1) * shrink) // (pw if pooled else 1)
    return h, w
