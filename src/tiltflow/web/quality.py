"""Quality suggestions for the viewer: ``core.quality`` detectors run on a series, as messages.

Suggestions are shown to the user, who accepts them with one click; nothing here changes the project.
Views already excluded are not suggested again. The detectors run on the values of every view,
excluded or not, and their findings are kept per series keyed by those values (``MEMO_SERIES``),
so a page's repeated requests do not run them again; the exclusions are applied after.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from tiltflow.core import quality
from tiltflow.web.models import Suggestion, SuggestionKind
from tiltflow.web.thumbnails import ViewStats
from tiltflow.workflow.sets import CtfTomoSeries, TiltSeries

MEMO_SERIES = 256  # series whose findings are kept: the detectors' results depend on the values alone


def _value(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _collect(
    ts_id: str, orders: list[int], flags: quality.Flags, kind: SuggestionKind, message: Callable[[int, float], str]
) -> list[Suggestion]:
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
    found = _ctf_findings(
        series.ts_id,
        tuple(c.acquisition_order for c in items),
        tuple(c.tilt_angle_deg for c in items),
        tuple(c.defocus_mean_a for c in items),
        tuple(_value(c.fit_resolution_a) for c in items),
    )
    enabled = {c.acquisition_order for c in items if c.enabled}
    return [s for s in found if s.view in enabled]


@functools.lru_cache(maxsize=MEMO_SERIES)
def _ctf_findings(
    ts_id: str,
    orders: tuple[int, ...],
    tilts_deg: tuple[float, ...],
    defocus_a: tuple[float, ...],
    res_a: tuple[float, ...],
) -> tuple[Suggestion, ...]:
    """The CTF detectors on one series' values (tilt-angle order), excluded views included."""
    tilts = torch.tensor(tilts_deg, dtype=torch.float64)
    defocus = torch.tensor(defocus_a, dtype=torch.float64)
    res = torch.tensor(res_a, dtype=torch.float64)
    found = _collect(
        ts_id,
        list(orders),
        quality.flag_defocus_outliers(tilts, defocus),
        "defocus",
        lambda i, s: f"defocus {defocus[i] / 1e4:.2f} µm is {s / 1e4:+.2f} µm off its neighbours' trend",
    )
    found += _collect(
        ts_id,
        list(orders),
        quality.flag_poor_fit_resolution(res),
        "fit_resolution",
        lambda i, s: f"fit resolution {res[i]:.1f} Å is much worse than the series' (z {s:.1f})",
    )
    return tuple(found)


def suggest_for_tilt_series(
    series: TiltSeries, stats: dict[int, ViewStats], ctf: CtfTomoSeries | None = None
) -> list[Suggestion]:
    """Dark, blank or dimmed views (from image statistics), large motion, and the CTF's outliers.

    ``stats`` maps acquisition order -> full-resolution statistics of that view.
    """
    images = sorted(series.images, key=lambda im: im.tilt_angle_deg)
    orders = tuple(im.acquisition_order for im in images)
    intensity = None
    if len(images) >= 3 and all(o in stats for o in orders):
        intensity = (tuple(stats[o].mean for o in orders), tuple(stats[o].std for o in orders))
    found = list(
        _image_findings(
            series.ts_id,
            orders,
            tuple(im.tilt_angle_deg for im in images),
            intensity,
            tuple(_value(im.total_motion_px) for im in images),
        )
    )
    if ctf is not None:
        found += suggest_for_ctf(ctf)
    enabled = {im.acquisition_order for im in images if im.enabled}
    return [s for s in found if s.view in enabled]


@functools.lru_cache(maxsize=MEMO_SERIES)
def _image_findings(
    ts_id: str,
    orders: tuple[int, ...],
    tilts_deg: tuple[float, ...],
    intensity: tuple[tuple[float, ...], tuple[float, ...]] | None,
    motion_px: tuple[float, ...],
) -> tuple[Suggestion, ...]:
    """The image detectors on one series' values (tilt-angle order), excluded views included;
    ``intensity``: the views' (means, stds), None when a view has no statistics."""
    found: list[Suggestion] = []
    if intensity is not None:
        tilts = torch.tensor(tilts_deg, dtype=torch.float64)
        mean = torch.tensor(intensity[0], dtype=torch.float64)
        std = torch.tensor(intensity[1], dtype=torch.float64)
        dark = quality.flag_dark_views(mean)
        found += _collect(ts_id, list(orders), dark, "dark", lambda i, s: f"mean {s:.2f}x the series' median")
        blank = quality.flag_blank_views(std)
        blank.flagged &= ~dark.flagged  # a dark view has little contrast too: one message per cause
        found += _collect(
            ts_id, list(orders), blank, "blank", lambda i, s: f"contrast (std) {s:.2f}x the series' median"
        )
        drops = quality.flag_intensity_drops(tilts, mean)
        drops.flagged &= ~(dark.flagged | blank.flagged)
        found += _collect(
            ts_id, list(orders), drops, "intensity_drop", lambda i, s: f"mean {s:.2f}x what its neighbours predict"
        )
    motion = torch.tensor(motion_px, dtype=torch.float64)
    if len(orders) >= 3 and torch.isfinite(motion).any():
        found += _collect(
            ts_id,
            list(orders),
            quality.flag_large_motion(motion),
            "motion",
            lambda i, s: f"total motion {motion[i]:.1f} px (z {s:.1f})",
        )
    return tuple(found)
