"""Simple raster plots written as RGB PNG (no matplotlib): line/point charts with axes, ticks and
labels, and point tracks over a greyscale image.  Text uses a built-in 5 x 7 bitmap font (upper
case, digits, a few symbols), drawn at twice its size.

Image coordinates follow DESIGN.md §2: row 0 of an image is IMOD's bottom row, so images are shown
with row 0 at the bottom and y increasing upwards, as 3dmod shows them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiltflow.io.png import encode_png_rgb8

_GLYPHS = {  # 7 rows of 5 bits, most significant bit on the left
    "0": "01110 10001 10011 10101 11001 10001 01110",
    "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111",
    "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010",
    "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110",
    "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110",
    "9": "01110 10001 10001 01111 00001 00010 01100",
    "A": "01110 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11100 10010 10001 10001 10001 10010 11100",
    "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110",
    "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001",
    "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001",
    "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110",
    "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101",
    "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010",
    "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 10001 01010 00100 00100 00100",
    "Z": "11111 00001 00010 00100 01000 10000 11111",
    "-": "00000 00000 00000 11111 00000 00000 00000",
    ".": "00000 00000 00000 00000 00000 01100 01100",
    ",": "00000 00000 00000 00000 01100 00100 01000",
    "(": "00010 00100 01000 01000 01000 00100 00010",
    ")": "01000 00100 00010 00010 00010 00100 01000",
    "/": "00000 00001 00010 00100 01000 10000 00000",
    ":": "00000 01100 01100 00000 01100 01100 00000",
    "+": "00000 00100 00100 11111 00100 00100 00000",
    "=": "00000 00000 11111 00000 11111 00000 00000",
    "%": "11000 11001 00010 00100 01000 10011 00011",
    "°": "01100 10010 10010 01100 00000 00000 00000",
    "_": "00000 00000 00000 00000 00000 00000 11111",
    "#": "01010 01010 11111 01010 11111 01010 01010",
    " ": "00000 00000 00000 00000 00000 00000 00000",
    "<": "00010 00100 01000 10000 01000 00100 00010",
    ">": "01000 00100 00010 00001 00010 00100 01000",
}
_FONT = {c: np.array([[b == "1" for b in row] for row in g.split()], dtype=bool) for c, g in _GLYPHS.items()}
SCALE = 2  # glyph pixel size
CHAR_W, CHAR_H = 6 * SCALE, 7 * SCALE  # advance and height of one character
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
BLACK, GREY, RED = (0, 0, 0), (200, 200, 200), (214, 39, 40)


def text_width(text: str) -> int:
    return len(text) * CHAR_W - SCALE


def draw_text(
    img: np.ndarray, x: int, y: int, text: str, color=BLACK, *, vertical: bool = False, box: bool = False
) -> None:
    """Draw ``text`` with its top-left corner at pixel column ``x``, row ``y`` (``vertical``: rotated
    90° counter-clockwise, reading upwards, starting at the bottom-left ``(x, y)``); ``box``: on a
    white background (labels over images)."""
    if box and not vertical:
        y0, y1 = max(y - 2, 0), min(y + CHAR_H + 2, img.shape[0])
        x0, x1 = max(x - 2, 0), min(x + text_width(text) + 2, img.shape[1])
        img[y0:y1, x0:x1] = 255
    for i, ch in enumerate(text.upper()):
        glyph = np.kron(_FONT.get(ch, _FONT["#"]), np.ones((SCALE, SCALE), dtype=bool))
        if vertical:
            glyph = np.rot90(glyph)
            x0, y0 = x, y - (i + 1) * CHAR_W + SCALE
        else:
            x0, y0 = x + i * CHAR_W, y
        ys, xs = np.nonzero(glyph)
        ys, xs = ys + y0, xs + x0
        ok = (ys >= 0) & (ys < img.shape[0]) & (xs >= 0) & (xs < img.shape[1])
        img[ys[ok], xs[ok]] = color


def draw_line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color=BLACK, width: int = 1) -> None:
    """Straight line between two pixel positions (column, row), ``width`` px thick."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.round(np.linspace(x0, x1, n)).astype(int)
    ys = np.round(np.linspace(y0, y1, n)).astype(int)
    r = width // 2
    for dy in range(-r, width - r):
        for dx in range(-r, width - r):
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < img.shape[0]) & (xx >= 0) & (xx < img.shape[1])
            img[yy[ok], xx[ok]] = color


def draw_marker(img: np.ndarray, x: float, y: float, color=BLACK, radius: int = 3, filled: bool = True) -> None:
    """A disc (or ring) centred at pixel (column ``x``, row ``y``)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    d = np.sqrt(xx**2 + yy**2)
    keep = d <= radius + 0.3 if filled else (d <= radius + 0.3) & (d >= radius - 1.0)
    ys, xs = yy[keep] + round(y), xx[keep] + round(x)
    ok = (ys >= 0) & (ys < img.shape[0]) & (xs >= 0) & (xs < img.shape[1])
    img[ys[ok], xs[ok]] = color


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _label(v: float, step: float) -> str:
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{v:.{digits}f}"


@dataclass
class Series:
    """One data series of a chart: points ``(x, y)`` joined by lines unless ``lines`` is False."""

    x: np.ndarray
    y: np.ndarray
    label: str
    color: tuple[int, int, int] = PALETTE[0]
    lines: bool = True
    marker: int = 3
    highlight: np.ndarray | None = None  # bool per point: drawn as red rings


@dataclass
class Axes:
    """The data-to-pixel mapping of a plot area (y up)."""

    left: int
    top: int
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    extras: dict = field(default_factory=dict)

    def to_px(self, x, y):
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        px = self.left + (np.asarray(x, dtype=float) - x0) / (x1 - x0) * (self.width - 1)
        py = self.top + self.height - 1 - (np.asarray(y, dtype=float) - y0) / (y1 - y0) * (self.height - 1)
        return px, py


def draw_axes(img: np.ndarray, ax: Axes, *, x_label: str, y_label: str, title: str, grid: bool = True) -> None:
    """Frame, ticks with values, grid lines, axis labels and a title around ``ax``."""
    xt = nice_ticks(*ax.x_range, n=max(3, ax.width // 70))
    yt = nice_ticks(*ax.y_range, n=max(3, ax.height // 70))
    x_step = xt[1] - xt[0] if len(xt) > 1 else 1.0
    y_step = yt[1] - yt[0] if len(yt) > 1 else 1.0
    right, bottom = ax.left + ax.width - 1, ax.top + ax.height - 1
    for v in xt:
        px, _ = ax.to_px(v, ax.y_range[0])
        if grid:
            draw_line(img, px, ax.top, px, bottom, GREY)
        draw_line(img, px, bottom, px, bottom + 5)
        s = _label(v, x_step)
        draw_text(img, int(px) - text_width(s) // 2, bottom + 9, s)
    for v in yt:
        _, py = ax.to_px(ax.x_range[0], v)
        if grid:
            draw_line(img, ax.left, py, right, py, GREY)
        draw_line(img, ax.left - 5, py, ax.left, py)
        s = _label(v, y_step)
        draw_text(img, ax.left - 9 - text_width(s), int(py) - CHAR_H // 2, s)
    for a, b, c, d in (
        (ax.left, ax.top, right, ax.top),
        (ax.left, bottom, right, bottom),
        (ax.left, ax.top, ax.left, bottom),
        (right, ax.top, right, bottom),
    ):
        draw_line(img, a, b, c, d)
    draw_text(img, ax.left + (ax.width - text_width(x_label)) // 2, bottom + 16 + CHAR_H, x_label)
    draw_text(img, 8, ax.top + (ax.height + text_width(y_label)) // 2, y_label, vertical=True)
    draw_text(
        img, max(8, min(ax.left + (ax.width - text_width(title)) // 2, img.shape[1] - text_width(title) - 8)), 10, title
    )


def _padded_range(values: np.ndarray, *, include_zero: bool = False) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = float(v.min()), float(v.max())
    if include_zero:
        lo = min(lo, 0.0)
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.5
    return lo - (0.0 if include_zero and lo == 0.0 else pad), hi + pad


def line_chart(
    series: list[Series],
    *,
    x_label: str,
    y_label: str,
    title: str,
    size: tuple[int, int] = (900, 520),
    include_zero: bool = True,
    legend_notes: tuple[str, ...] = (),
) -> np.ndarray:
    """A chart of one or more series: ``(h, w, 3)`` uint8, ``size`` = (width, height) px."""
    w, h = size
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    xs = np.concatenate([np.asarray(s.x, dtype=float) for s in series])
    ys = np.concatenate([np.asarray(s.y, dtype=float) for s in series])
    legend = [(s.label, s.color, True) for s in series] + [(n, RED, False) for n in legend_notes]
    top = 40 + len(legend) * (CHAR_H + 6)
    ax = Axes(
        left=110,
        top=top,
        width=w - 110 - 30,
        height=h - top - 80,
        x_range=_padded_range(xs),
        y_range=_padded_range(ys, include_zero=include_zero),
    )
    draw_axes(img, ax, x_label=x_label, y_label=y_label, title=title)
    y = 36
    for text, color, filled in legend:  # one line each, between the title and the plot
        draw_marker(img, ax.left + 8, y + CHAR_H // 2, color, 4 if filled else 6, filled=filled)
        draw_text(img, ax.left + 20, y, text)
        y += CHAR_H + 6
    for s in series:
        px, py = ax.to_px(s.x, s.y)
        ok = np.isfinite(px) & np.isfinite(py)
        if s.lines:
            idx = np.nonzero(ok)[0]
            for a, b in itertools.pairwise(idx):
                draw_line(img, px[a], py[a], px[b], py[b], s.color, width=2)
        for i in np.nonzero(ok)[0]:
            draw_marker(img, px[i], py[i], s.color, s.marker)
            if s.highlight is not None and s.highlight[i]:
                draw_marker(img, px[i], py[i], RED, s.marker + 4, filled=False)
    return img


def tracks_over_image(
    image: np.ndarray,
    tracks: np.ndarray,
    *,
    title: str,
    max_size: int = 720,
    labels: list[str] | None = None,
    flagged: np.ndarray | None = None,
    scale: float = 1.0,
    anchor: int | None = None,
) -> np.ndarray:
    """Point tracks ``(n, t, 2)`` (x, y image px; NaN = missing) over a greyscale ``(h, w)`` image.

    The image is shrunk to fit ``max_size`` and shown with row 0 at the bottom (y up); each track
    is a coloured polyline with a ring and its label at point ``anchor`` (the view the image
    shows; default, or where missing: its first finite point); ``flagged`` tracks (bool ``(n,)``)
    are drawn in red.  Axes are in pixels of ``image`` times ``scale`` (e.g. the binning, for
    pixels of the unbinned stack).
    """
    h, w = image.shape
    f = max(1, math.ceil(max(h, w) / max_size))  # shrink by block means, or
    up = max(1, max_size // max(h, w))  # enlarge small images by pixel repetition
    hb, wb = h // f, w // f
    thumb = image[: hb * f, : wb * f].astype(np.float64).reshape(hb, f, wb, f).mean(axis=(1, 3))
    lo, hi = np.percentile(thumb, [1, 99])
    grey = np.clip((thumb - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)[::-1]  # row 0 at the bottom
    grey = np.repeat(np.repeat(grey, up, axis=0), up, axis=1)
    hb, wb = grey.shape
    left, top = 110, 40
    img = np.full((top + hb + 80, max(left + wb + 30, text_width(title) + 40), 3), 255, dtype=np.uint8)
    img[top : top + hb, left : left + wb] = grey[..., None]
    ax = Axes(
        left=left,
        top=top,
        width=wb,
        height=hb,
        x_range=(-0.5 * scale, (w - 0.5) * scale),
        y_range=(-0.5 * scale, (h - 0.5) * scale),
    )
    draw_axes(img, ax, x_label="X (PX)", y_label="Y (PX)", title=title, grid=False)
    for i, track in enumerate(np.asarray(tracks, dtype=float)):
        ok = np.isfinite(track).all(-1)
        if not ok.any():
            continue
        color = RED if flagged is not None and flagged[i] else PALETTE[i % len(PALETTE)]
        px, py = ax.to_px(track[ok, 0] * scale, track[ok, 1] * scale)
        for a in range(len(px) - 1):
            draw_line(img, px[a], py[a], px[a + 1], py[a + 1], color, width=2)
        k = int(np.cumsum(ok)[anchor] - 1) if anchor is not None and ok[anchor] else 0
        draw_marker(img, px[k], py[k], color, 7, filled=False)  # a ring: the bead stays visible inside
        if labels is not None:
            draw_text(img, int(px[k]) + 8, int(py[k]) - CHAR_H - 6, labels[i], color, box=True)
    return img


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an ``(h, w, 3)`` uint8 picture as PNG (atomically: a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_png_rgb8(np.ascontiguousarray(img)))
    tmp.replace(path)
    return path
