"""Simulated movies with X-ray hits, and the measurements that judge their removal.

The ground truth behind ``tests/test_xray_frames.py``, ``tests/test_xray.py`` and
``benchmarks/xray.py``. The movie (:func:`simulate_movie`): a noise-free tilt image of ``dose``
e/px/frame with band-passed texture (+-10 %), a gentle gradient and dark gold beads of 5-15 nm
(projected spheres, 50-80 % darker, with a bright Fresnel fringe), moved by a sub-pixel trajectory
(1-4 px, fastest in the first frames, plus 0.1 px jitter) per frame (DESIGN.md §2: a feature at p
in the sum lies at p + shift in the frame), counted as ``Poisson(lam / gain) * gain`` with a
striped gain, plus X-ray hits: 1-5 events per frame, each a single pixel, a pair or a 3-5 px
streak with 40-250 raw counts per pixel, anywhere (borders and beads included). The hit-free
frames (same Poisson draws) are kept as the reference.

Arrays are ``(t, h, w)`` frames / ``(h, w)`` images, float32 gain-corrected counts; shifts are
``(t, 2)`` x, y in pixels; lengths in Å (``pixel_size_a``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltflow.core.fourier import shift_image_2d
from tiltflow.core.motion import align_and_sum

_DIRECTIONS = [(0, 1), (1, 0), (1, 1), (1, -1)]
# hit kind -> probabilities of (single pixel, pair, 3-5 px streak)
KINDS = {"single": (1.0, 0.0, 0.0), "pair": (0.0, 1.0, 0.0), "streak": (0.0, 0.0, 1.0), "mixed": (0.5, 0.3, 0.2)}


@dataclass(frozen=True)
class XrayHits:
    """The X-ray events of a movie: ``kind`` a key of :data:`KINDS`, ``per_frame`` the (least, most)
    events per frame, ``counts`` the range of raw counts per hit pixel."""

    kind: str = "mixed"
    per_frame: tuple[int, int] = (1, 5)
    counts: tuple[float, float] = (40.0, 250.0)


NO_HITS = XrayHits(per_frame=(0, 0))


def simulate_movie(
    seed: int,
    *,
    shape: tuple[int, int] = (256, 256),
    n_frames: int = 8,
    dose: float = 1.0,
    pixel_size_a: float = 1.38,
    n_beads: int = 3,
    hits: XrayHits = XrayHits(),
) -> dict:
    """Movie with X-ray hits and its hit-free twin; see the module docstring.

    ``dose`` in e/px/frame, ``hits`` the X-ray events (:class:`XrayHits`). Returns frames / clean
    (t, h, w) float32 gain-corrected counts, ``lam`` (h, w) the noise-free image (e/px/frame),
    ``shifts`` (t, 2) x, y px, ``beads`` [(y, x, radius px)], ``bead_mask`` (h, w) (within
    radius + 2 px: the fringe included) and ``hits`` [{frame, pix [(y, x)]}].
    """
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    lam, beads, bead_mask = _specimen_image(g, shape, dose, pixel_size_a, n_beads)
    shifts = _trajectory(g, n_frames)
    xx = torch.arange(w, dtype=torch.float64)[None].expand(h, w)
    gain = (1.0 + 0.05 * torch.sin(xx / 7.0) + 0.02 * torch.randn(h, w, generator=g, dtype=torch.float64)).float()
    moved = shift_image_2d(lam.float().expand(n_frames, h, w), shifts).clamp_min(0.0)
    clean = torch.poisson(moved / gain, generator=g) * gain
    frames = clean.clone()
    events = _add_hits(g, frames, gain, hits.kind, hits.per_frame, hits.counts)
    return {
        "frames": frames,
        "clean": clean,
        "lam": lam.float(),
        "shifts": shifts,
        "beads": beads,
        "bead_mask": bead_mask,
        "hits": events,
    }


def _specimen_image(
    g: torch.Generator, shape: tuple[int, int], dose: float, pixel_size_a: float, n_beads: int
) -> tuple[torch.Tensor, list, torch.Tensor]:
    """Noise-free image ``lam`` (h, w) float64 e/px/frame, beads [(y, x, radius px)] and the
    bead mask (h, w) bool (within radius + 2 px)."""
    h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # phase: weak texture and the gold beads (5e-3 rad/Å of projected gold), imaged through a CTF
    # (300 kV, 2-5 µm underfocus): the beads get fringes; amplitude: exp(-gold / 120 Å)
    k = (
        torch.sqrt(
            torch.fft.fftfreq(h, dtype=torch.float64)[:, None] ** 2
            + torch.fft.rfftfreq(w, dtype=torch.float64)[None] ** 2
        )
        / pixel_size_a
    )  # 1/Å
    defocus_a = 20000.0 + 30000.0 * float(torch.rand(1, generator=g))
    ctf = -torch.sin(math.pi * 0.0197 * defocus_a * k**2 + 0.07) * torch.exp(-((k / 0.25) ** 2))
    phase = 0.05 * torch.randn(h, w, generator=g, dtype=torch.float64)
    gold = torch.zeros(h, w, dtype=torch.float64)
    beads, bead_mask = [], torch.zeros(h, w, dtype=torch.bool)
    for _ in range(n_beads):
        r_a = torch.empty(1, dtype=torch.float64).uniform_(25.0, 75.0, generator=g)
        r = float(r_a) / pixel_size_a  # radius, px
        cy, cx = (float(torch.rand(1, generator=g)) * n for n in (h, w))
        rho = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        gold = gold + 2.0 * r * pixel_size_a * torch.sqrt((1.0 - (rho / r) ** 2).clamp_min(0.0))
        beads.append((cy, cx, r))
        bead_mask |= rho <= r + 2.0
    phase = phase + 5e-3 * gold
    wave = 2.0 * torch.fft.irfft2(torch.fft.rfft2(phase) * ctf, s=shape)
    lam = torch.exp(-gold / 120.0) * (1.0 + wave.clamp(-0.9, 2.0)) * (1.0 + 0.05 * (xx / w - 0.5))
    return (dose * lam).clamp_min(0.0), beads, bead_mask


def _trajectory(g: torch.Generator, n_frames: int) -> torch.Tensor:
    """(t, 2) float32 x, y shifts in px: decaying beam-induced motion plus jitter, mean zero."""
    f = torch.arange(n_frames, dtype=torch.float64)
    path = 1.0 - torch.exp(-(f + 1.0) / 1.5)
    angle = 2 * math.pi * float(torch.rand(1, generator=g))
    length = 1.0 + 3.0 * float(torch.rand(1, generator=g))
    shifts = length * path[:, None] * torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    shifts = shifts + 0.1 * torch.randn(n_frames, 2, generator=g, dtype=torch.float64)
    return (shifts - shifts.mean(0)).float()


def _add_hits(
    g: torch.Generator,
    frames: torch.Tensor,
    gain: torch.Tensor,
    kind: str,
    hits_per_frame: tuple[int, int],
    counts: tuple[float, float],
) -> list[dict]:
    """Add X-ray events to ``frames`` (t, h, w) in place (raw counts times ``gain`` (h, w)) ->
    [{frame, pix [(y, x)]}]."""
    n_frames, h, w = frames.shape
    hits = []
    probs = torch.tensor(KINDS[kind])
    for fi in range(n_frames):
        lo, hi = hits_per_frame
        for _ in range(int(torch.randint(lo, hi + 1, (1,), generator=g))):
            which = int(torch.multinomial(probs, 1, generator=g))
            n_px = [1, 2, int(torch.randint(3, 6, (1,), generator=g))][which]
            dy, dx = _DIRECTIONS[int(torch.randint(4, (1,), generator=g))]
            y0 = int(torch.randint(h, (1,), generator=g))
            x0 = int(torch.randint(w, (1,), generator=g))
            pix = [(y0 + i * dy, x0 + i * dx) for i in range(n_px)]
            pix = [(y, x) for y, x in pix if 0 <= y < h and 0 <= x < w]
            for y, x in pix:
                c = float(torch.empty(1).uniform_(*counts, generator=g))
                frames[fi, y, x] += round(c) * gain[y, x]
            hits.append({"frame": fi, "pix": pix})
    return hits


def hit_mask(sim: dict) -> torch.Tensor:
    """(t, h, w) bool: the frame pixels that received X-ray counts."""
    mask = torch.zeros(sim["frames"].shape, dtype=torch.bool)
    for hit in sim["hits"]:
        for y, x in hit["pix"]:
            mask[hit["frame"], y, x] = True
    return mask


def hit_residuals_sd(image: torch.Tensor, reference: torch.Tensor, sim: dict, radius_px: int = 3) -> torch.Tensor:
    """Per hit event: the largest |image - reference| within ``radius_px`` (Chebyshev) of where
    its pixels land in the sum (p - shift), in SDs of the sum's noise (sqrt(t * lam)) -> (n,)."""
    h, w = image.shape
    noise = (sim["lam"] * sim["frames"].shape[0]).clamp_min(1.0).sqrt()
    z = (image - reference).abs() / noise
    out = []
    for hit in sim["hits"]:
        sx, sy = sim["shifts"][hit["frame"]].tolist()
        best = 0.0
        for y, x in hit["pix"]:
            cy, cx = round(y - sy), round(x - sx)
            y0, y1 = max(cy - radius_px, 0), min(cy + radius_px + 1, h)
            x0, x1 = max(cx - radius_px, 0), min(cx + radius_px + 1, w)
            if y0 < y1 and x0 < x1:
                best = max(best, float(z[y0:y1, x0:x1].max()))
        out.append(best)
    return torch.tensor(out)


def motion_sum(frames: torch.Tensor, sim: dict) -> torch.Tensor:
    """(h, w): the motion-corrected sum of ``frames`` (t, h, w) with the true shifts (Fourier
    shifts: what rings)."""
    return align_and_sum(frames, sim["shifts"]).total
