"""Quality suggestions for the viewer: ``core.quality`` detectors run on a series, as messages.

Suggestions are shown to the user, who accepts them with one click; nothing here changes the project.
Views already excluded are not suggested again.
"""

from __future__ import annotations

import math

import torch

from tiltflow.core import quality
from tiltflow.web.models import Suggestion
from tiltflow.web.thumbnails import ViewStats
from tiltflow.workflow.sets import CtfTomoSeries, TiltSeries


def _value(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _collect(ts_id: str, orders: list[int], flags: quality.Flags, kind: str, message) -> list[Suggestion]:
    out = []
    for i in torch.nonzero(flags.flagged).flatten().tolist():
        score = float(flags.score[i])
        out.append(
            Suggestion(
                ts_id=ts_id,
                view=orders[i],
                kind=kind,
                message=message(i, score),
                score=score if math.isfinite(score) else None,
            )
        )
    return out


def suggest_for_ctf(series: CtfTomoSeries) -> list[Suggestion]:
    """Defocus far from its neighbours' trend; fit resolution much worse than the series'."""
    items = sorted(series.items, key=lambda c: c.tilt_angle_deg)
    if len(items) < 3:
        return []
    orders = [c.acquisition_order for c in items]
    tilts = torch.tensor([c.tilt_angle_deg for c in items], dtype=torch.float64)
    defocus = torch.tensor([c.defocus_mean_a for c in items], dtype=torch.float64)
    res = torch.tensor([_value(c.fit_resolution_a) for c in items], dtype=torch.float64)
    found = _collect(
        series.ts_id,
        orders,
        quality.flag_defocus_outliers(tilts, defocus),
        "defocus",
        lambda i, s: f"defocus {defocus[i] / 1e4:.2f} µm is {s / 1e4:+.2f} µm off its neighbours' trend",
    )
    found += _collect(
        series.ts_id,
        orders,
        quality.flag_poor_fit_resolution(res),
        "fit_resolution",
        lambda i, s: f"fit resolution {res[i]:.1f} Å is much worse than the series' (z {s:.1f})",
    )
    enabled = {c.acquisition_order for c in items if c.enabled}
    return [s for s in found if s.view in enabled]


def suggest_for_tilt_series(
    series: TiltSeries, stats: dict[int, ViewStats], ctf: CtfTomoSeries | None = None
) -> list[Suggestion]:
    """Dark, blank or dimmed views (from image statistics), large motion, and the CTF's outliers.

    ``stats`` maps acquisition order -> full-resolution statistics of that view.
    """
    images = sorted(series.images, key=lambda im: im.tilt_angle_deg)
    orders = [im.acquisition_order for im in images]
    found: list[Suggestion] = []
    if len(images) >= 3 and all(o in stats for o in orders):
        tilts = torch.tensor([im.tilt_angle_deg for im in images], dtype=torch.float64)
        mean = torch.tensor([stats[o].mean for o in orders], dtype=torch.float64)
        std = torch.tensor([stats[o].std for o in orders], dtype=torch.float64)
        dark = quality.flag_dark_views(mean)
        found += _collect(series.ts_id, orders, dark, "dark", lambda i, s: f"mean {s:.2f}x the series' median")
        blank = quality.flag_blank_views(std)
        blank.flagged &= ~dark.flagged  # a dark view has little contrast too: one message per cause
        found += _collect(
            series.ts_id, orders, blank, "blank", lambda i, s: f"contrast (std) {s:.2f}x the series' median"
        )
        drops = quality.flag_intensity_drops(tilts, mean)
        drops.flagged &= ~(dark.flagged | blank.flagged)
        found += _collect(
            series.ts_id, orders, drops, "intensity_drop", lambda i, s: f"mean {s:.2f}x what its neighbours predict"
        )
    motion = torch.tensor([_value(im.total_motion_px) for im in images], dtype=torch.float64)
    if len(images) >= 3 and torch.isfinite(motion).any():
        found += _collect(
            series.ts_id,
            orders,
            quality.flag_large_motion(motion),
            "motion",
            lambda i, s: f"total motion {motion[i]:.1f} px (z {s:.1f})",
        )
    if ctf is not None:
        found += suggest_for_ctf(ctf)
    enabled = {im.acquisition_order for im in images if im.enabled}
    return [s for s in found if s.view in enabled]
