"""Whether a tilt series' CTF is supported by its spectra.

The series pass (``ctf_series.refine_series``)
measures each tilt's ring evidence near the series' defocus trend: the robust z-score of the 1-D
Thon-ring score at its peak there, over the whole defocus range (``SeriesTrend.strength``). A
spectrum without rings still peaks somewhere by chance: on the accuracy matrix's noise-limited
512-px crops the highest such peak of 7 tilts was z 3.1-4.0, while tilts whose fits were right
(within 100 Å) had 6.4-20. A series whose tilts all stay below ``rings_z`` has defocus values the
data do not support (its fits were 1.4-3.9 µm off); one where only a few tilts reach it rests on
those few, the others following the trend; one whose rings stop at low tilt has its high-tilt
defocus extrapolated (on the matrix, 350 Å median error above 30° where the noise-free oracle
had 40 Å).
"""

from __future__ import annotations

import math

import torch

from tiltflow.core.verdict import Verdict

__all__ = ["RINGS_Z", "ctf_series_verdict"]

RINGS_Z = 6.0  # ring evidence (robust z) a tilt needs to count as showing Thon rings


def ctf_series_verdict(
    strength,  # (t,) ring evidence per tilt (SeriesTrend.strength); NaN: unknown
    tilt_angles_deg,  # (t,) degrees
    *,
    rings_z: float = RINGS_Z,
    min_tilts: int = 3,
) -> Verdict:
    """Judge whether a tilt series' spectra support its CTF: ``good``, ``check`` or ``failed``.

    ``failed``: no tilt shows Thon rings (evidence below ``rings_z``); ``check``: fewer than
    ``min_tilts`` tilts do (the others follow the defocus trend through them), or none beyond half the
    tilt range does while more than two tilts lie beyond (their defocus is extrapolated); ``good``
    otherwise.

    Parameters
    ----------
    strength : array_like
        ``(t,)`` ring evidence per tilt (robust z, ``SeriesTrend.strength``); NaN where unknown.
    tilt_angles_deg : array_like
        ``(t,)`` tilt angles, degrees.
    rings_z : float
        Evidence a tilt needs to count as showing rings.
    min_tilts : int
        Tilts with rings a ``good`` series needs.

    Returns
    -------
    Verdict
        The status and its reasons.

    Examples
    --------
    >>> ctf_series_verdict([9.0, 12.0, 8.0, 2.0], [-6.0, -3.0, 0.0, 3.0]).status
    'good'
    >>> ctf_series_verdict([2.0, 3.0, 1.0, 2.5], [-6.0, -3.0, 0.0, 3.0]).status
    'failed'
    """
    z = torch.as_tensor(strength, dtype=torch.float64).reshape(-1).cpu()
    angles = torch.as_tensor(tilt_angles_deg, dtype=torch.float64).reshape(-1).cpu()
    if z.numel() != angles.numel():
        raise ValueError(f"ctf_series_verdict: {z.numel()} strengths for {angles.numel()} tilt angles")
    known = torch.isfinite(z)
    if not bool(known.any()):
        return Verdict("check", ("the series pass did not run (too few tilts): defocus values unchecked",))
    z = torch.where(known, z, torch.full_like(z, -math.inf))
    best = int(z.argmax())
    with_rings = int((z >= rings_z).sum())
    if with_rings == 0:
        return Verdict(
            "failed",
            (
                f"no tilt shows Thon rings above the noise (strongest z {float(z[best]):.1f} "
                f"at {float(angles[best]):.0f}°, rings need {rings_z:g}): the defocus values are "
                "not supported by the data; check the dose, the CTF window and --ctf-range",
            ),
        )
    if with_rings < min(min_tilts, int(known.sum())):
        return Verdict(
            "check",
            (
                f"only {with_rings} of {int(known.sum())} tilts show Thon rings (z ≥ {rings_z:g}): "
                "the others follow the series' defocus trend through them",
            ),
        )
    reach = float(angles[z >= rings_z].abs().max())
    beyond = int((known & (angles.abs() > reach + 1e-6)).sum())
    top = float(angles[known].abs().max())
    if reach < 0.5 * top and beyond > 2:
        return Verdict(
            "check",
            (
                f"no tilt beyond ±{reach:.0f}° shows Thon rings: the defocus of the {beyond} tilts up "
                f"to ±{top:.0f}° is extrapolated from the trend of those within",
            ),
        )
    return Verdict("good")
