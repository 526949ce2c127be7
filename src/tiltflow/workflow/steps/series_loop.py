"""The per-series loop of the steps that work on the enabled views of each tilt series (``align``,
``reconstruct``): which series take part, each checked before any task is made."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.views import require_stacks


@dataclass(frozen=True)
class SeriesViews:
    """One series taking part and its enabled views (tilt order)."""

    series: TiltSeries
    views: list[TiltImage]


def enabled_series(
    source: TiltSeriesSet,
    pointer: str,
    *,
    min_views: int,
    purpose: str,
    skip: Collection[str] = (),
    why_none: str = "",
) -> list[SeriesViews]:
    """The enabled series of ``source`` (less those in ``skip``) with their enabled views: stacks,
    and at least ``min_views`` of them (``purpose`` names what needs them in the message), else an
    InputError. None left is an InputError too (``why_none`` adds to its message)."""
    out = []
    for ts in source.items:
        if not ts.enabled or ts.ts_id in skip:
            continue
        views = ts.enabled_images
        require_stacks(ts, pointer, views)
        if len(views) < min_views:
            raise InputError(f"{ts.ts_id}: only {len(views)} enabled views — {purpose} needs at least {min_views}")
        out.append(SeriesViews(ts, views))
    if not out:
        raise InputError(f"{pointer}: every tilt series is excluded{why_none}")
    return out
