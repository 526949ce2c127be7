"""What the noisy CTF field supports: perfect-search estimators for the matrix's CTF rows.

The matrix's CTF oracle fits the noise-free sums, so it says nothing about what the *noise* allows.
These estimators keep the noisy even/odd sums and give the fit everything a perfect series model
could give it (the spectra rescaled to the **true** defocus and astigmatism; the true astigmatism),
then search the series pass's own per-tilt objective (``ctf_trend.defocus_evidence``: the robust z of
the 1-D score of the equi-phase average) perfectly, on a grid over the step's whole defocus range:

- ``global``: each tilt's best defocus (a perfect per-tilt search; far minima win where noise lets them);
- ``local``: each tilt's best within ±2 ring periods (at the fit's high-resolution limit) of the truth;
- ``series``: the best line ``c + b * tilt`` through the summed objective of all tilts;
- ``series_local``: each tilt's best within ±1/2 ring period of that line;
- ``true_line``: the least-squares line through the true defoci (the floor of a series model for a
  tilt without rings: its jitter about the line).

``best`` = the best median of global / series / series_local per |tilt| group (<= 30°, > 30°). These
are NOT upper bounds: the step's series pass (floored evidence, scatter marginalised, a prior fit per
tilt) beats them on most scenarios; they show where the objective itself, perfectly searched, finds
the defocus, and ``true_line`` where the targets are out of reach for ring-less tilts.

Run: ``python benchmarks/ctf_attainable.py [--n 12] [--only S04] [--cache /tmp/ctf_h] [--no-ours]``
(``--cache``: the rendered fields, ~370 MB per scenario). ``attainable_errors(field, params)`` returns
the per-group error lists of each estimator (for ``_matrix_run.ctf_rows``).
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _matrix_run import TARGETS, CtfField, MotionCtfParams, _fit_series  # noqa: E402 (benchmarks dir on the path)
from accuracy_matrix import matrix_scenarios  # noqa: E402

from tiltflow.core.ctf_fit import CtfFit  # noqa: E402
from tiltflow.core.ctf_model import electron_wavelength_a  # noqa: E402
from tiltflow.core.ctf_spectra import tiled_power_spectrum  # noqa: E402
from tiltflow.core.ctf_trend import defocus_evidence  # noqa: E402
from tiltflow.workflow.steps.ctf_common import ctf_params  # noqa: E402


def _true_fit(t: dict) -> CtfFit:
    return CtfFit(t["defocus_u_a"], t["defocus_v_a"], t["astigmatism_angle_deg"], 0.0, math.nan, math.nan)


def _tilt_scan(spectrum: torch.Tensor, params, truth: CtfFit) -> np.ndarray:
    """The series pass's per-tilt objective along the fine grid over the step's whole defocus range:
    the robust z of the 1-D score of the equi-phase average for the true astigmatism
    (``ctf_trend.defocus_evidence``)."""
    ref = (truth.defocus_u_a, truth.defocus_v_a, truth.astigmatism_angle_deg)
    m = torch.as_tensor(_grid(params), dtype=torch.float64)
    z = defocus_evidence([spectrum], params, references=[ref], defocus_grid_a=m, phases_rad=torch.zeros(1))
    return z[0].numpy()


def _period_a(params) -> float:
    """Å of mean defocus per Thon ring at the fit's high-resolution limit."""
    return params.resolution_range_a[1] ** 2 / electron_wavelength_a(params.voltage_kv)


def _grid(params) -> np.ndarray:
    step = 0.01 * _period_a(params)  # ring phase at k_max moves 0.01*pi per step
    lo, hi = params.defocus_range_um[0] * 1e4, params.defocus_range_um[1] * 1e4
    return np.arange(lo, hi + step, step)


def _series_model(
    curves: list[np.ndarray], angles: list[float], params, max_slope: float = 200.0, grid: np.ndarray | None = None
) -> np.ndarray:
    """Per tilt, the mean defocus of the best series line ``c + b * angle`` (Å, Å/°) by the summed
    objective of all tilts (a perfect global search of the series model; the astigmatism is given)."""
    m = _grid(params) if grid is None else grid
    step = m[1] - m[0]
    big = np.stack(curves)  # (t, g)
    best, arg = -np.inf, (0.0, 0.0)
    for b in np.arange(-max_slope, max_slope + 1e-9, 2.0):
        shift = np.rint(b * np.asarray(angles) / step).astype(int)
        total = np.zeros(m.size)
        for i, sh in enumerate(shift):  # total[c] += curve_i[c + sh], outside the grid: 0
            lo, hi = max(0, -sh), min(m.size, m.size - sh)
            total[lo:hi] += big[i, lo + sh : hi + sh]
        j = int(total.argmax())
        if total[j] > best:
            best, arg = total[j], (m[j], b)
    return arg[0] + arg[1] * np.asarray(angles)


def attainable_errors(field: CtfField, params) -> dict[str, tuple[list[float], list[float]]]:
    """Per |tilt| group (<= 30°, > 30°: the scheme's nominal angle) the |mean-defocus error| (Å) on
    the noisy summed halves (spectra rescaled to the true defocus, true astigmatism given) of:
    'global' a perfect search of the fit's objective per tilt; 'local' the same within ±2 ring periods
    of the truth; 'series' a perfect search of the series line (defocus linear in tilt) on the summed
    objective; 'series_local' each tilt's peak within ±1/2 ring period of that line.
    ``attainable`` in the table: the better of 'global' and 'series_local' per group."""
    s = field.series
    m, period = _grid(params), _period_a(params)
    curves, angles, truths, groups = [], [], [], []
    for i, t in enumerate(s["tilts"]):
        truth = _true_fit(t)
        spec = tiled_power_spectrum(
            sum(field.halves[i]),
            params,
            tilt_angle_deg=t["mdoc_tilt_angle_deg"],
            tilt_axis_deg=s["mdoc_tilt_axis_deg"],
            reference_defocus_a=(truth.defocus_u_a, truth.defocus_v_a, truth.astigmatism_angle_deg),
        )
        curves.append(_tilt_scan(spec, params, truth))
        angles.append(t["mdoc_tilt_angle_deg"])
        truths.append(truth.defocus_mean_a)
        groups.append(0 if abs(t["nominal_tilt_angle_deg"]) <= 30 else 1)
    line = _series_model(curves, angles, params)
    a = np.stack([np.ones(len(angles)), np.asarray(angles)], -1)
    true_line = a @ np.linalg.lstsq(a, np.asarray(truths), rcond=None)[0]
    keys = ("global", "local", "series", "series_local", "true_line")
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in keys}
    for c, true, g, ln, tl in zip(curves, truths, groups, line, true_line, strict=True):
        near = np.abs(m - true) <= 2.0 * period
        on_line = np.abs(m - ln) <= 0.5 * period
        est = {
            "global": m[int(c.argmax())],
            "local": m[near][int(c[near].argmax())],
            "series": ln,
            "series_local": m[on_line][int(c[on_line].argmax())] if on_line.any() else ln,
            "true_line": tl,
        }
        for k, v in est.items():
            out[k][g].append(abs(float(v) - true))
    return out


def ours_errors(field: CtfField, params) -> tuple[list[float], list[float]]:
    """|mean-defocus error| (Å) of the step's fits and series pass on the noisy halves, by |tilt| group."""
    s = field.series
    fits = _fit_series(field, params, lambda i: field.halves[i], "ctf")
    out: tuple[list[float], list[float]] = ([], [])
    for i, t in enumerate(s["tilts"]):
        e = abs(0.5 * (fits[i].defocus_u_a + fits[i].defocus_v_a) - 0.5 * (t["defocus_u_a"] + t["defocus_v_a"]))
        out[0 if abs(t["nominal_tilt_angle_deg"]) <= 30 else 1].append(e)
    return out


def _field(sc, cache: Path | None, root: Path) -> CtfField:
    path = cache / f"{sc.name}_{sc.seed}.pkl" if cache else None
    if path and path.exists():
        with path.open("rb") as f:
            field = pickle.load(f)
        field.root = root
        return field
    field = CtfField(sc, root)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump(field, f)
    return field


def _med(x: list[float]) -> float:
    return float(np.median(x)) if x else math.nan


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="scenario names, e.g. S04 S11")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the rendered CTF fields")
    ap.add_argument("--no-ours", action="store_true", help="skip the step's own fits")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    lo_t, hi_t = TARGETS["ctf_low_a"], TARGETS["ctf_high_a"]
    cols = ("ours", "global", "local", "series", "series_local", "true_line")
    print(f"{'scen':5s} {'px Å':>5s} {'e/Å²':>5s} {'df µm':>5s} | " + " | ".join(f"{c:>13s}" for c in cols) + " | best")
    for sc in matrix_scenarios(a.n, a.seed, False):
        if a.only and sc.name not in a.only:
            continue
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            field = _field(sc, a.cache, Path(tmp))
            s = field.series
            params = ctf_params(
                MotionCtfParams(window_px=sc.window_px),
                pixel_size_a=s["pixel_size_a"],
                voltage_kv=s["voltage_kv"],
                cs_mm=s["cs_mm"],
                amplitude_contrast=s["amplitude_contrast"],
            )
            att = attainable_errors(field, params)
            ours = ([], []) if a.no_ours else ours_errors(field, params)
        att["ours"] = ours
        best = [min(_med(att[k][g]) for k in ("global", "series", "series_local")) for g in (0, 1)]
        ok = "/".join("yes" if b <= lim else "no" for b, lim in zip(best, (lo_t, hi_t), strict=True))
        row = " | ".join(f"{_med(att[c][0]):6.0f}/{_med(att[c][1]):6.0f}" for c in cols)
        print(
            f"{sc.name:5s} {sc.pixel_size_a:5.2f} {sc.dose_per_tilt_e_a2:5.1f} {sc.defocus_um:5.2f} | {row} | "
            f"{best[0]:.0f}/{best[1]:.0f} {ok} ({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
