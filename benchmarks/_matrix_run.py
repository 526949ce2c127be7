"""One scenario of the accuracy matrix through the tutorial chain, as the steps run it
(``accuracy_matrix.py``). Three simulations of the same scenario (``tiltflow.testing.scenarios``):

- the **movies** (unbinned crop, a few tilts to ±60°), written as ``demo-data`` writes them:
  ``motion-ctf``: ``motion_movie_task`` per movie (file in, files out, the step's defaults);
  ``xray-erase``: ``erase_series_task`` on the stack of sums in tilt-angle order;
- the **CTF field** (motion-corrected even/odd sums of a wider field): the step's per-tilt CTF
  fits (``fit_tilt_ctf``) and its series pass (``refine_series_results``), and the same on the
  noise-free sums (the oracle);
- the **alignment series** (41 views at 3°, at the binned pixel size the align step works at,
  ``demo.simulate_stack``): ``align``: ``align_series_task``, fiducial and patch, given the binned
  stack with ``binning`` 1 (the step's other parameters at the CLI's defaults),

with the mdoc's tilt angles and axis, as ``import-movies`` reads them (``step_params``)."""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

import numpy as np
import tifffile
import torch
from _matrix_truth import (
    alignment_errors,
    bead_pixels,
    clean_movie_and_oracle,
    trajectory_sq_errors,
    xray_leftovers,
)
from _simulated_tasks import simulated_movie_task

from tiltflow.core.ctf_model import electron_wavelength_a
from tiltflow.io.mrc import read_section, write_mrc
from tiltflow.testing import write_demo_dataset
from tiltflow.testing.demo import GAIN_FILE, simulate_stack
from tiltflow.testing.scenarios import Scenario
from tiltflow.workflow.steps.align import AlignParams
from tiltflow.workflow.steps.align_tasks import AlignResult, AlignTask, align_series_task
from tiltflow.workflow.steps.ctf_common import TiltCtf, ctf_params, fit_tilt_ctf
from tiltflow.workflow.steps.ctf_series_pass import refine_series_results
from tiltflow.workflow.steps.motion_ctf import MotionCtfParams
from tiltflow.workflow.steps.motion_tasks import MovieResult, MovieSetup, motion_movie_task
from tiltflow.workflow.steps.xray_erase import XrayEraseParams, XrayTask, erase_series_task

XRAY_ERASED = "X-ray hits erased (fraction)"
TARGETS = {
    "motion_px": 0.15,
    "motion_oracle_ratio": 1.5,
    "motion_min_dose": 0.5,
    "ctf_low_a": 100.0,
    "ctf_high_a": 250.0,
    "xray_erased": 0.99,
    "bead_px": 0,
    "align_px": 1.0,
    "align_deg": 3.0,
}
QUANTITIES = {  # every row of a scenario, in order, with its target
    "motion RMS (px)": "<= 1.5x oracle (<= 0.15 at >= 0.5 e/px/frame)",
    "CTF median |d defocus| |tilt| <= 30 (Å)": "<= 100",
    "CTF median |d defocus| |tilt| > 30 (Å)": "<= 250",
    XRAY_ERASED: ">= 0.99",
    "X-ray: erased pixels on beads": "0",
    "fiducial residual vs truth (px)": "<= 1 or failed",
    "fiducial angles vs truth (°)": "<= 3 or failed",
    "patch residual vs truth (px)": "<= 1 or failed",
    "patch angles vs truth (°)": "<= 3 or failed",
}


def step_params(sc: Scenario) -> dict:
    """Parameters per step: CLI defaults; the scenario's CTF window (the default 512 where the
    movie crop holds it), the bead diameter, and binning 1 for a stack simulated already binned."""
    window, binning = sc.window_px, 1
    motion = MotionCtfParams(window_px=window)
    # the X-ray reference: the hit-free movie, motion only, nothing replaced in its frames
    clean = motion.model_copy(update={"estimate_ctf": False, "even_odd": False, "frame_xray_sd": 0.0})
    return {
        "motion": motion,
        "clean": clean,
        "xray": XrayEraseParams(),  # erases the half sums too (odd_even), no IMOD model
        "fiducial": AlignParams(method="fiducial", binning=binning, bead_diameter_nm=round(sc.bead_diameter_nm, 1)),
        "patch": AlignParams(method="patch", binning=binning),
    }


def _row(quantity: str, value: float, target: str, holds: bool | None, **kw) -> dict:
    return {
        "quantity": quantity,
        "value": value,
        "target": target,
        "holds": holds,
        "oracle": kw.get("oracle"),
        "verdict": kw.get("verdict"),
        "note": kw.get("note", ""),
    }


def _error_row(quantity: str, exc: BaseException) -> dict:
    line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return _row(quantity, math.nan, QUANTITIES[quantity], False, note=f"error: {line[:160]}")


class Session:
    """A written scenario: files, truth, per-step outputs (filled as the steps run)."""

    def __init__(self, sc: Scenario, root: Path):
        self.sc, self.root = sc, root
        self.truth = write_demo_dataset(root / "data", sc.movie_config())
        self.series = self.truth["series"][0]
        self.gain = tifffile.imread(root / "data" / GAIN_FILE)
        self.order = list(self.series["tilt_order_by_angle"])  # acquisition index per stack slot
        self.params = step_params(sc)
        self.dark = {i for i, t in enumerate(self.series["tilts"]) if t.get("dark_view")}
        self.motion: dict[int, MovieResult] = {}
        self.clean: dict[int, MovieResult] = {}
        self.oracle: dict[int, np.ndarray] = {}  # (t, 2) per view, truth zero
        self.failed: dict[int, str] = {}  # movies motion-ctf refused (left out, as --skip-bad)

    def movie_task(self, i: int, movie: str, p: MotionCtfParams, out: str) -> MovieResult:
        setup = MovieSetup(params=p, gain=str(self.root / "data" / GAIN_FILE), dark=None, device="cpu")
        return motion_movie_task(simulated_movie_task(self.series, i, movie, setup, out_dir=out))


def xray_views(series: dict) -> set[int]:
    """The views whose X-ray hits are measured (acquisition indices): 0° and the two highest tilts,
    where the ice dims the sums most (a hit-free reference costs a motion-ctf run per view)."""
    by_tilt = sorted(range(len(series["tilts"])), key=lambda i: abs(series["tilts"][i]["nominal_tilt_angle_deg"]))
    return {by_tilt[0], *by_tilt[-2:]}


def run_motion(ses: Session) -> None:
    """motion-ctf per movie; the oracle of each from its frames without X-rays; for the
    ``xray_views`` those hit-free movies through motion-ctf (motion only: the X-ray reference)."""
    (ses.root / "clean").mkdir(exist_ok=True)
    measured = xray_views(ses.series)
    for i, t in enumerate(ses.series["tilts"]):
        try:
            ses.motion[i] = ses.movie_task(
                i, str(ses.root / "data" / t["movie"]), ses.params["motion"], str(ses.root / "motion")
            )
        except Exception as exc:  # noqa: BLE001 -- one bad movie: left out, as --skip-bad does
            ses.failed[i] = f"{type(exc).__name__}: {exc}"[:160]
            continue
        path = ses.root / "clean" / f"m{i:03d}.tif"
        clean, ses.oracle[i] = clean_movie_and_oracle(ses.series, i, ses.gain)
        if i not in measured:
            continue
        tifffile.imwrite(path, clean, compression="lzw", photometric="minisblack")
        ses.clean[i] = ses.movie_task(i, str(path), ses.params["clean"], str(ses.root / "clean_out"))
    ses.order = [i for i in ses.order if i not in ses.failed]


def motion_rows(ses: Session) -> list[dict]:
    """Pooled RMS trajectory error (px) over the views that are not dark, and the oracle's."""
    err, orc = [], []
    for i, t in enumerate(ses.series["tilts"]):
        if i in ses.dark or i in ses.failed:
            continue
        true = np.asarray(t["frame_shifts_px"])
        err.append(trajectory_sq_errors(np.asarray(ses.motion[i].shifts_px), true))
        orc.append(trajectory_sq_errors(ses.oracle[i], np.zeros_like(true)))
    rms, oracle = float(np.sqrt(np.concatenate(err).mean())), float(np.sqrt(np.concatenate(orc).mean()))
    limit, target, attainable = motion_target(ses.sc.dose_e_px_frame, oracle)
    note = f"{len(ses.failed)} movie(s) refused: {next(iter(ses.failed.values()))}" if ses.failed else ""
    if not attainable:
        note = (note + "; " if note else "") + (
            f"<= {TARGETS['motion_px']} px not attainable here: "
            f"{TARGETS['motion_oracle_ratio']}x oracle = {TARGETS['motion_oracle_ratio'] * oracle:.2f} px"
        )
    return [_row("motion RMS (px)", rms, target, rms <= limit and not ses.failed, oracle=oracle, note=note)]


def motion_target(dose_e_px_frame: float, oracle_px: float) -> tuple[float, str, bool]:
    """The motion target of a scenario: (limit px, its text, whether the absolute part is attainable).

    Issue 11 item 2: within 1.5x of the oracle, and <= 0.15 px wherever the dose is >= 0.5
    e/px/frame. The absolute part is judged only where the data allow it: where 1.5x the oracle
    (each frame registered to its own noise-free image) is itself above 0.15 px, 0.15 px is not
    attainable by per-frame estimation and the row is judged on the oracle alone (and says so)."""
    ratio, absolute = TARGETS["motion_oracle_ratio"], TARGETS["motion_px"]
    limit, target = ratio * oracle_px, f"<= {ratio}x oracle"
    if dose_e_px_frame < TARGETS["motion_min_dose"]:
        return limit, target, True
    if limit > absolute:
        return limit, target + f" ({absolute} n/a)", False
    return min(limit, absolute), target + f", <= {absolute}", True


class CtfField:
    """The CTF field of a scenario (``Scenario.ctf_config``): per tilt (acquisition order) the
    noise-free sum (frames x expected counts per frame) and its even/odd halves (Poisson of the
    summed dose, split binomially as alternate frames split it)."""

    def __init__(self, sc: Scenario, root: Path):
        from tiltflow.testing.acquisition import plan_series
        from tiltflow.testing.demo import render_truth_tilt, series_rng

        cfg = sc.ctf_config()
        self.sc, self.root = sc, root
        self.series = plan_series(cfg, 0, series_rng(cfg, 0))
        rng = np.random.default_rng([sc.seed, 17])
        self.clean, self.halves = {}, {}
        for i in range(len(self.series["tilts"])):
            clean = render_truth_tilt(self.series, i).double().numpy() * cfg.n_frames
            total = rng.poisson(np.clip(clean, 0.0, None))
            even = rng.binomial(total, 0.5)
            self.clean[i] = torch.from_numpy(clean.astype(np.float32))
            self.halves[i] = [
                torch.from_numpy(even.astype(np.float32)),
                torch.from_numpy((total - even).astype(np.float32)),
            ]


def _fit_series(field: CtfField, params, images_of, name: str) -> dict[int, TiltCtf]:
    """The motion-ctf step's per-tilt fits of ``images_of(i)`` and its series pass."""
    s = field.series
    angles = {i: t["mdoc_tilt_angle_deg"] for i, t in enumerate(s["tilts"])}
    fits = {
        i: fit_tilt_ctf(
            images_of(i),
            params,
            tilt_angle_deg=angles[i],
            tilt_axis_deg=s["mdoc_tilt_axis_deg"],
            grid_xy=None,
            out_png=field.root / name / f"{i:03d}.png",
        )
        for i in angles
    }
    refine_series_results(
        fits, images_of, params, tilt_angles_deg=angles, tilt_axis_deg=s["mdoc_tilt_axis_deg"], grid_xy=None
    )
    return fits


def ctf_rows(field: CtfField) -> list[dict]:
    """The motion-ctf step's per-tilt fits of the even/odd sums and its series pass; median
    |mean-defocus error| (Å) by |tilt|, the CTF verdict; the oracle: the same on the noise-free
    sums (what the specimen and the field allow)."""
    from tiltflow.core.ctf_verdict import ctf_series_verdict

    s = field.series
    params = ctf_params(
        MotionCtfParams(window_px=field.sc.window_px),
        pixel_size_a=s["pixel_size_a"],
        voltage_kv=s["voltage_kv"],
        cs_mm=s["cs_mm"],
        amplitude_contrast=s["amplitude_contrast"],
    )
    ours = _fit_series(field, params, lambda i: field.halves[i], "ctf")
    oracle = _fit_series(field, params, lambda i: [field.clean[i]], "ctf_oracle")
    order = sorted(ours)
    strengths = [ours[i].ring_strength for i in order]
    verdict = ctf_series_verdict(
        [math.nan if v is None else v for v in strengths], [s["tilts"][i]["mdoc_tilt_angle_deg"] for i in order]
    )
    errors: dict[str, tuple[list, list]] = {"ours": ([], []), "oracle": ([], [])}
    for i, t in enumerate(s["tilts"]):
        true = 0.5 * (t["defocus_u_a"] + t["defocus_v_a"])
        for key, fits in (("ours", ours), ("oracle", oracle)):
            e = abs(0.5 * (fits[i].defocus_u_a + fits[i].defocus_v_a) - true)
            errors[key][0 if abs(t["nominal_tilt_angle_deg"]) <= 30 else 1].append(e)  # the scheme's angle
    rows, rings = [], _ring_sampling(field.sc, params)
    reason = f"; {verdict.reasons[0][:90]}" if verdict.reasons else ""
    for k, (name, lim) in enumerate((("<= 30", TARGETS["ctf_low_a"]), ("> 30", TARGETS["ctf_high_a"]))):
        errs, orc = errors["ours"][k], errors["oracle"][k]
        med = float(np.median(errs)) if errs else math.nan
        rows.append(
            _row(
                f"CTF median |d defocus| |tilt| {name} (Å)",
                med,
                f"<= {lim:g}",
                med <= lim if errs else None,
                oracle=float(np.median(orc)) if orc else None,
                verdict=verdict.status,
                note=f"{len(errs)} views; {rings}{reason}",
            )
        )
    return rows


def _ring_sampling(sc: Scenario, params) -> str:
    """How finely the step's periodogram samples the Thon rings at the fit's high-resolution limit
    (spectrum pixels per ring period at the series' defocus); below 2 the rings there are not resolved."""
    lam = electron_wavelength_a(params.voltage_kv)
    k = 1.0 / params.resolution_range_a[1]  # 1/Å
    period = 1.0 / (2.0 * lam * sc.defocus_um * 1e4 * k)  # 1/Å between rings at k
    per_ring = period * params.window_px * params.pixel_size_a  # spectrum px (1 / (window * px) each)
    return f"{per_ring:.1f} spectrum px per Thon ring at {1 / k:.1f} Å (window {params.window_px})" + (
        ": not resolved" if per_ring < 2 else ""
    )


def _stack(ses: Session, runs: dict[int, MovieResult], name: str) -> Path:
    path = ses.root / f"{name}.mrc"
    write_mrc(
        path, np.stack([np.load(runs[i].files["sum"]) for i in ses.order]), voxel_size_a=ses.series["pixel_size_a"]
    )
    return path


def run_xray(ses: Session) -> tuple[list[dict], Path]:
    """xray-erase on the sums; hits left >= 5 SD (%) on the views with a hit-free reference
    (``xray_views``) and erased pixels on beads (every view)."""
    stack = _stack(ses, ses.motion, "sums")
    out = ses.root / "xray"
    out.mkdir(exist_ok=True)
    n = len(ses.order)
    r = erase_series_task(
        XrayTask(
            key="TS",
            refs={"file": [(str(stack), k) for k in range(n)]},
            params=ses.params["xray"],
            out_dir=str(out),
            pixel_size_a=ses.series["pixel_size_a"],
            device="cpu",
        )
    )
    erased_path = r.files["file"]
    lines = [ln.split() for ln in Path(r.positions_file).read_text().splitlines() if ln and not ln.startswith("#")]
    marks = np.array(lines, dtype=np.int64).reshape(-1, 3)  # view (tilt order), x, y
    seen = after_motion = left = on_beads = 0
    radius = ses.series["specimen"]["bead_radius_px"]
    for k, i in enumerate(ses.order):
        t = ses.series["tilts"][i]
        erased = read_section(erased_path, k)
        if i in ses.clean:
            clean = np.load(ses.clean[i].files["sum"])
            a, b, c = xray_leftovers(t, ses.gain, clean, read_section(str(stack), k), erased)
            seen, after_motion, left = seen + a, after_motion + b, left + c
        mask = np.zeros(erased.shape, bool)
        sel = marks[marks[:, 0] == k]
        mask[sel[:, 2], sel[:, 1]] = True
        on_beads += bead_pixels(t, radius, mask)
    frac = 1.0 - left / seen if seen else math.nan
    rows = [
        _row(
            XRAY_ERASED,
            frac,
            f">= {TARGETS['xray_erased']}",
            frac >= TARGETS["xray_erased"] if seen else None,
            note=f"{left} of {seen} hits >= 5 SD left ({after_motion} after motion-ctf) in "
            f"{sum(i in ses.clean for i in ses.order)} views",
        ),
        _row("X-ray: erased pixels on beads", float(on_beads), "0", on_beads == 0),
    ]
    return rows, Path(erased_path)


class AlignSeries:
    """The alignment series of a scenario: binned stack (tilt-angle order) and its truth."""

    def __init__(self, sc: Scenario, root: Path, params: dict):
        self.sc, self.root, self.params = sc, root, params
        root.mkdir(parents=True, exist_ok=True)
        data, self.series = simulate_stack(sc.align_config())
        self.order = list(self.series["tilt_order_by_angle"])
        self.stack = root / "align_stack.mrc"
        write_mrc(self.stack, data, voxel_size_a=self.series["pixel_size_a"])


def align_rows(ses: AlignSeries, stack: Path, method: str) -> list[dict]:
    """align (fiducial or patch) on the binned stack; residual of the true markers (px of the
    aligned views) and the largest angle error (°, tilt angles and axis) against the truth."""
    s = ses.series
    out = ses.root / f"align_{method}"
    out.mkdir(exist_ok=True)
    angles = [s["tilts"][i]["mdoc_tilt_angle_deg"] for i in ses.order]
    r: AlignResult = align_series_task(
        AlignTask(
            key="TS",
            refs=[(str(stack), k) for k in range(len(angles))],
            angles=angles,
            params=ses.params[method],
            tilt_axis_deg=s["mdoc_tilt_axis_deg"],
            pixel_size_a=s["pixel_size_a"],
            out_dir=str(out),
            device="cpu",
        )
    )
    verdict, failed = r.verdict.status, r.failed
    zero = min(ses.order, key=lambda i: abs(s["tilts"][i]["mdoc_tilt_angle_deg"]))
    beads = f"{sum(s['tilts'][zero]['bead_in_image'])} beads in the 0° view"
    reasons = "; ".join(str(x) for x in r.verdict.reasons)[:160]
    res_q, ang_q = f"{method} residual vs truth (px)", f"{method} angles vs truth (°)"
    if r.xf is None:  # a failed series has no alignment to measure
        note = f"{beads}; {reasons or 'no alignment returned'}"
        return [_row(q, math.nan, QUANTITIES[q], failed, verdict=verdict, note=note) for q in (res_q, ang_q)]
    e = alignment_errors(
        s,
        ses.order,
        {"xf": r.xf, "refined_tilt_angles_deg": r.refined_tilt_angles_deg, "tilt_axis_deg": r.tilt_axis_deg},
    )
    angle = max(e["tilt_err_deg"], e["axis_err_deg"])
    note = f"tilt {e['tilt_err_deg']:.2f}°, axis {e['axis_err_deg']:.2f}°" + (f"; {reasons}" if reasons else "")
    return [
        _row(
            res_q,
            e["residual_px"],
            QUANTITIES[res_q],
            failed or e["residual_px"] <= TARGETS["align_px"],
            verdict=verdict,
            note=f"{beads}; residual of {e['markers']}",
        ),
        _row(ang_q, angle, QUANTITIES[ang_q], failed or angle <= TARGETS["align_deg"], verdict=verdict, note=note),
    ]


CTF_QUANTITIES = ["CTF median |d defocus| |tilt| <= 30 (Å)", "CTF median |d defocus| |tilt| > 30 (Å)"]


MOVIE_QUANTITIES = [q for q in list(QUANTITIES)[:5] if q not in CTF_QUANTITIES]
ALIGN_QUANTITIES = list(QUANTITIES)[5:]


# the parts of a scenario a run can measure: movies (motion and X-rays), the CTF field, the alignment series
PARTS = ("movies", "ctf", "align")


def run_scenario(sc: Scenario, root: Path, log=print, parts: tuple[str, ...] = PARTS) -> tuple[list[dict], dict]:
    """Every row of the ``parts`` of one scenario (a failing method gives error rows; the rest go on)
    and seconds."""
    seconds: dict[str, float] = {}
    rows: list[dict] = []
    if "movies" in parts:
        rows += _movie_rows(sc, root, seconds, log)
    if "ctf" in parts:
        t0 = time.perf_counter()
        rows += _guarded(CTF_QUANTITIES, lambda: ctf_rows(CtfField(sc, root / "ctf_field")), log)
        seconds["CTF field"] = time.perf_counter() - t0
    if "align" in parts:
        rows += _align_rows(sc, root, seconds, log)
    order = list(QUANTITIES)
    return sorted(rows, key=lambda row: order.index(row["quantity"])), seconds


def _movie_rows(sc: Scenario, root: Path, seconds: dict[str, float], log) -> list[dict]:
    """Motion and X-ray rows of a scenario's movies."""
    t0 = time.perf_counter()
    try:
        ses = Session(sc, root)
        seconds["simulate movies"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_motion(ses)
        seconds["motion-ctf"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 -- nothing downstream of the movies can run
        log(traceback.format_exc())
        return [_error_row(n, exc) for n in MOVIE_QUANTITIES]
    rows = _guarded(["motion RMS (px)"], lambda: motion_rows(ses), log)
    t0 = time.perf_counter()
    rows += _guarded([XRAY_ERASED, "X-ray: erased pixels on beads"], lambda: run_xray(ses)[0], log)
    seconds["xray-erase"] = time.perf_counter() - t0
    return rows


def _align_rows(sc: Scenario, root: Path, seconds: dict[str, float], log) -> list[dict]:
    """Fiducial and patch rows of a scenario's alignment series."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        series = AlignSeries(sc, root / "align", step_params(sc))
    except Exception as exc:  # noqa: BLE001
        log(traceback.format_exc())
        return [_error_row(n, exc) for n in ALIGN_QUANTITIES]
    seconds["simulate alignment series"] = time.perf_counter() - t0
    for method in ("fiducial", "patch"):
        t0 = time.perf_counter()
        rows += _guarded(
            [f"{method} residual vs truth (px)", f"{method} angles vs truth (°)"],
            lambda m=method: align_rows(series, series.stack, m),
            log,
        )
        seconds[f"align {method}"] = time.perf_counter() - t0
    return rows


def _guarded(names: list[str], fn, log) -> list[dict]:
    """``fn()``'s rows, or one error row per quantity when it raises."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 -- reported in the rows, the other methods go on
        log(traceback.format_exc(limit=3))
        return [_error_row(n, exc) for n in names]
