"""The wrapper every ``.dopt`` file has, whatever its version, and the bounds a file may ask of
the decoder::

    b"DOPT" | version u16 | codec u8 | reserved u8 | body_len u32 | body | crc32 u32

The CRC covers everything before it, so truncated or altered files are rejected before any
version's reader sees the body. Also here: bounded decompression and bounds-checked reads, which
every reader uses so that no file can make it allocate more than its tensors need."""

from __future__ import annotations

import lzma
import struct
import zlib

__all__ = ["ArtifactError", "MAGIC", "MAX_DIM", "MAX_HEADER_BYTES", "MAX_LAYERS", "MAX_PARAMS",
           "PREAMBLE", "Reader", "VERSIONS", "check_wrapper", "inflate", "wrap"]

MAGIC = b"DOPT"
VERSIONS = (1, 2, 3)  # what decode reads
PREAMBLE = struct.Struct("<4sHBBI")

# Bounds of what a file may ask the decoder to build. Every model distopt encodes is within
# them (``encode`` refuses bigger ones), so every file it writes can be read back.
MAX_PARAMS = 1 << 25  # 33.5 M parameters: 134 MB as float32
MAX_HEADER_BYTES = 1 << 20
MAX_LAYERS = 64
MAX_DIM = 1 << 16  # any single width, channel count, input side, class or vocabulary count


class ArtifactError(ValueError):
    """The file is not a valid distopt artifact (wrong magic, version, length or checksum, or
    contents that do not fit its header)."""


def wrap(version: int, codec: int, body: bytes) -> bytes:
    head = PREAMBLE.pack(MAGIC, version, codec, 0, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def check_wrapper(data: bytes, source: str) -> tuple[int, int]:
    """Check magic, version, length and CRC; return the version and the wrapper's codec."""
    if len(data) < PREAMBLE.size + 4:
        raise ArtifactError(f"{source}: {len(data)} bytes is too short to be an artifact")
    magic, version, codec, _, body_len = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{source}: not a distopt artifact (magic {magic!r}, expected "
                            f"{MAGIC!r})")
    if version not in VERSIONS:
        raise ArtifactError(f"{source}: artifact version {version} is not supported (this "
                            f"distopt reads versions {', '.join(map(str, VERSIONS))})")
    expected = PREAMBLE.size + body_len + 4
    if len(data) != expected:
        raise ArtifactError(f"{source}: length {len(data)} bytes, header says {expected}; the "
                            "file is truncated or has trailing data")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ArtifactError(f"{source}: CRC mismatch; the file is corrupt")
    return version, codec


def inflate(body: bytes, codec: int, limit: int, source: str, zdict: bytes = b"") -> bytes:
    """Decompress at most ``limit`` bytes; a body that holds more is rejected, not expanded.
    ``zdict``: zlib's preset dictionary (format v2's header section)."""
    try:
        if codec == 1:
            # No match can reach further back than the output we accept, so a dictionary of
            # that size decodes every valid body (the encoder's preset holds 64 MB).
            dict_size = min(max(limit + 1, 4096), 64 << 20)
            filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
            out = lzma.LZMADecompressor(format=lzma.FORMAT_RAW,
                                        filters=filters).decompress(body, limit + 1)
        else:
            d = zlib.decompressobj(zdict=zdict) if zdict else zlib.decompressobj()
            out = d.decompress(body, limit + 1)
    except (lzma.LZMAError, zlib.error) as e:
        raise ArtifactError(f"{source}: body cannot be decompressed ({e})") from None
    return out


class Reader:
    """Bounds-checked reads from the decompressed payload."""

    def __init__(self, buf: memoryview, source: str) -> None:
        self.buf, self.pos, self.source = buf, 0, source

    def take(self, nbytes: int, what: str) -> memoryview:
        if self.pos + nbytes > len(self.buf):
            raise ArtifactError(f"{self.source}: payload ends inside {what}")
        view = self.buf[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return view
