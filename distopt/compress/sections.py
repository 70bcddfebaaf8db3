"""The body of a version-2 or -3 file: four sections (header, index, scales and biases,
values), each ``codec u8 | raw_len varint | stored_len varint | stored bytes`` and each
compressed on its own by whichever codec is smallest for it (none, LZMA, LZMA without literal
context, zlib, zlib with a preset dictionary), so that every byte of the file belongs to one
part of the byte breakdown. Framing only: what the sections hold is the tensor codings'
business (:mod:`distopt.compress.codings`)."""

from __future__ import annotations

import lzma
import zlib
from typing import Any

from distopt import metrics as M
from distopt.compress import codecs as K
from distopt.compress.wrapper import PREAMBLE, ArtifactError, inflate

__all__ = ["BYTE_LAYOUT", "CODECS", "LZMA", "LZMA_FLAT", "RAW", "SECTIONS", "ZLIB", "ZLIB_DICT",
           "lzma_filters", "pack_section", "section", "sections", "unpack_section"]

SECTIONS = (M.BYTES_HEADER, M.BYTES_INDEX, M.BYTES_SCALES, M.BYTES_VALUES)  # in file order
RAW, LZMA, ZLIB, LZMA_FLAT, ZLIB_DICT = 0, 1, 2, 3, 4  # section codecs
CODECS = (RAW, LZMA, ZLIB, LZMA_FLAT, ZLIB_DICT)
BYTE_LAYOUT = 0x10  # values section: sub-byte symbols stored one per byte
# zlib's preset dictionary for ZLIB_DICT: the strings a header is made of, so that a small
# model's header does not pay for spelling them out. Fixed for format version 2 forever.
ZDICT = (b'"lstm","gru","rnn","conv1d","mlp","head":"gap","cell":"gru","cell":"lstm",'
        b'"rnn_units":[,"vocab_size":"embed_dim":"kernel_size":5,"resize":,"tokens":true},'
        b'"config_name":"signals_conv1d","text_rnn","mnist_rnn","mnist_cnn_full","data_digest":"'
        b'"}},"t":[[8,16,1,[32],[4,16,2,[4,16,1,[4,16,0,[8,16,0,[16],[16],[16],'
        b'{"spec":{"family":"cnn","in_shape":[1,28,28],"num_classes":10,"conv_channels":[16,32],'
        b'"dense_units":[32]},"meta":{"input":{"scale":0.003921569,"mean":0.1307,"std":0.3081,'
        b'"tokens":false},"config_name":"mnist_cnn","data_digest":"')


def lzma_filters(size: int, flat: bool) -> list[dict[str, Any]]:
    """LZMA2 at its strongest, with a dictionary no bigger than the input (a bigger one only
    costs time); ``flat``: no literal context, which suits streams of codes."""
    f: dict[str, Any] = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                         "dict_size": max(4096, size)}
    if flat:
        f.update(lc=0, lp=0, pb=0)
    return [f]


def zlib_dict(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zdict=ZDICT)
    return c.compress(raw) + c.flush()
def pack_section(raw: bytes, flags: int = 0) -> tuple[int, bytes]:
    """The smallest of the section's codings, as (codec byte, stored bytes)."""
    options = {RAW: raw, ZLIB: zlib.compress(raw, 9), ZLIB_DICT: zlib_dict(raw)}
    if raw:
        for codec, flat in ((LZMA, False), (LZMA_FLAT, True)):
            options[codec] = lzma.compress(raw, format=lzma.FORMAT_RAW,
                                           filters=lzma_filters(len(raw), flat))
    codec = min(options, key=lambda c: (len(options[c]), c))
    return codec | flags, options[codec]


def section(codec: int, raw_len: int, stored: bytes) -> bytes:
    return bytes([codec]) + K.varint(raw_len) + K.varint(len(stored)) + stored


def sections(data: bytes, source: str) -> list[tuple[int, int, memoryview, int]]:
    """The four sections of a version-2 file as (codec byte, raw length, stored bytes, bytes
    the section takes in the file), framing checked, nothing decompressed."""
    body = memoryview(data)[PREAMBLE.size:-4]
    out, pos = [], 0
    try:
        for _ in SECTIONS:
            start = pos
            if pos >= len(body):
                raise K.CodingError("the body ends before its last section")
            codec = body[pos]
            raw_len, pos = K.read_varint(body, pos + 1)
            stored_len, pos = K.read_varint(body, pos)
            if pos + stored_len > len(body):
                raise K.CodingError("a section runs past the end of the body")
            out.append((codec, raw_len, body[pos:pos + stored_len], pos + stored_len - start))
            pos += stored_len
    except K.CodingError as e:
        raise ArtifactError(f"{source}: {e}") from None
    if pos != len(body):
        raise ArtifactError(f"{source}: {len(body) - pos} bytes follow the last section")
    return out


def unpack_section(sec: tuple[int, int, memoryview, int], expected: int, what: str,
                    source: str, flags_ok: int = 0) -> bytes:
    """Decompress one section to exactly ``expected`` bytes (or fail, reading no more)."""
    codec, raw_len, stored, _ = sec
    base = codec & ~flags_ok
    if base not in CODECS:
        raise ArtifactError(f"{source}: {what} section has unknown codec {codec}")
    if raw_len != expected:
        raise ArtifactError(f"{source}: {what} section holds {raw_len} bytes; its tensors need "
                            f"{expected}")
    raw = bytes(stored) if base == RAW else \
        inflate(bytes(stored), ZLIB if base in (ZLIB, ZLIB_DICT) else LZMA, expected, source,
                 ZDICT if base == ZLIB_DICT else b"")
    if len(raw) != expected:
        raise ArtifactError(f"{source}: {what} section decompresses to {len(raw)} bytes, "
                            f"not {expected}")
    return raw
