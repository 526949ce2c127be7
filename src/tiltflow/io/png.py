"""Greyscale PNG writing with zlib only (thumbnails, CTF spectrum pictures)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def encode_png_gray8(pixels: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``(h, w)`` uint8 pixels (no dependency beyond zlib)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"encode_png_gray8: need (h, w) uint8, got {pixels.shape} {pixels.dtype}")
    h, w = pixels.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def encode_png_rgb8(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``(h, w, 3)`` uint8 pixels (plots)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"encode_png_rgb8: need (h, w, 3) uint8, got {pixels.shape} {pixels.dtype}")
    h, w, _ = pixels.shape

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # colour type 2: RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
