"""Parameter checks that need the input set (image size, pixel size, frames, voltage): one line,
once, naming the option the user typed and the series, raised as InputError before a run exists.
Each ``check_<step>`` runs every check of one step; the step declares it (``Step.checks``) and
``Step.validate`` runs it."""

from __future__ import annotations

import math

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltSeries, TiltSeriesSet
from tiltflow.workflow.steps.checks import show

MIN_WINDOW_PX = 64  # the smallest CTF periodogram window (core.ctf_fit)
MIN_BINNED_PX = 16  # the smallest image motion, X-ray and reconstruction work on
MIN_ALIGN_PX = 32  # projection matching needs 32 px views
MAX_THICKNESS_NM = 2000.0  # thicker than any specimen a tilt series can image


def _series(source: TiltSeriesSet) -> list[TiltSeries]:
    return [ts for ts in source.items if ts.enabled]


def check_window_fits(window_px: int, source: TiltSeriesSet, option: str = "--window", binning: int = 1) -> None:
    """The CTF window fits every series' images (after ``binning``)."""
    for ts in _series(source):
        nx, ny = ts.size
        bx, by = nx // binning, ny // binning
        if window_px <= min(bx, by):
            continue
        size = f"{nx} x {ny} px images of {ts.ts_id}" + (
            f" ({bx} x {by} px after --binning {binning})" if binning > 1 else ""
        )
        largest = min(bx, by) // 2 * 2
        if largest >= MIN_WINDOW_PX:
            fix = f"pass {option} {largest} or less"
        elif binning > 1 and min(nx, ny) >= MIN_WINDOW_PX:
            fix = f"pass --binning {min(nx, ny) // MIN_WINDOW_PX} or less"
        else:
            fix = f"the images are smaller than the smallest window ({MIN_WINDOW_PX} px): the CTF cannot be fitted"
        raise InputError(f"{option} {window_px}: larger than the {size}; {fix}")


def check_binning(
    binning: int, source: TiltSeriesSet, *, min_px: int = MIN_BINNED_PX, option: str = "--binning"
) -> None:
    """Binned images keep at least ``min_px`` pixels on their shorter side."""
    for ts in _series(source):
        nx, ny = ts.size
        if min(nx, ny) // binning < min_px:
            most = max(1, min(nx, ny) // min_px)
            raise InputError(
                f"{option} {binning}: the {nx} x {ny} px images of {ts.ts_id} would be "
                f"{nx // binning} x {ny // binning} px, below the {min_px} px this step needs; "
                f"pass {option} {most} or less"
            )


def check_ctf_range(ctf_range_a: tuple[float, float], source: TiltSeriesSet, binning: int = 1) -> None:
    """The low-resolution end of ``--ctf-range`` is coarser than Nyquist of the (binned) images."""
    for ts in _series(source):
        pixel = ts.acquisition.pixel_size_a * binning
        nyquist = 2.0 * pixel * 1.001
        if ctf_range_a[0] <= nyquist:
            after, smaller = (f" after --binning {binning}", " or a smaller --binning") if binning > 1 else ("", "")
            raise InputError(
                f"--ctf-range {show(ctf_range_a)}: {ctf_range_a[0]:g} Å is not coarser than Nyquist "
                f"({nyquist:.2f} Å) of {ts.ts_id} ({pixel:g} Å/px{after}); pass a first value of "
                f"{math.ceil(nyquist * 10) / 10:g} or more{smaller}"
            )


def check_references(source: TiltSeriesSet) -> None:
    """The gain / dark files recorded at import still exist and are usable."""
    from tiltflow.io.gain import GainError, check_gain_values, read_gain

    for path, option in ((source.gain_file, "--gain"), (source.dark_file, "--dark")):
        if not path:
            continue
        try:
            ref = read_gain(path, option=option)
            if option == "--gain":
                check_gain_values(ref, path, option=option)
        except GainError as err:
            raise InputError(f"{err} (given to import-movies)") from None


def _frames(ts: TiltSeries, eer_groups: int) -> int | None:
    counts = [im.frames for im in ts.images if im.enabled and im.frames]
    if not counts:
        return None
    n = min(counts)
    return min(n, eer_groups) if ts.attrs.get("movie_format") == "eer" else n


def check_motion_ctf(p, source: TiltSeriesSet) -> None:
    """Every check of ``motion-ctf`` that needs its input, before the first movie is read."""
    check_binning(p.binning, source)
    if p.estimate_ctf:
        check_window_fits(p.window_px, source, binning=p.binning)
        check_ctf_range(p.ctf_range_a, source, binning=p.binning)
    for ts in _series(source):
        n = _frames(ts, p.eer_groups)
        if p.motion_grid and n is not None and p.motion_grid[2] > n:
            raise InputError(
                f"--motion-grid {show(p.motion_grid)}: {p.motion_grid[2]} time points, but the movies "
                f"of {ts.ts_id} have {n} frames; pass a last value of {n} or less (1 1 1: global only)"
            )
        kv = ts.acquisition.voltage_kv
        if p.dose_weighting and not 200.0 <= kv <= 300.0:
            raise InputError(
                f"--dose-weighting: critical exposures are known for 200-300 kV, {ts.ts_id} was "
                f"recorded at {kv:g} kV — leave out --dose-weighting"
            )
    check_references(source)


def check_ctf(p, source: TiltSeriesSet) -> None:
    """Every check of ``ctf`` that needs its input."""
    check_window_fits(p.window_px, source)
    check_ctf_range(p.ctf_range_a, source)


def check_align(p, source: TiltSeriesSet) -> None:
    """Every check of ``align`` that needs its input: binned views large enough, beads > 1 px."""
    check_binning(p.binning, source, min_px=MIN_ALIGN_PX)
    if p.method != "fiducial":
        return
    for ts in _series(source):
        bead_px = p.bead_diameter_nm * 10.0 / (ts.acquisition.pixel_size_a * p.binning)
        nx, ny = ts.size
        if bead_px <= 1.0:
            raise InputError(
                f"--bead-diameter-nm {p.bead_diameter_nm:g}: {bead_px:.2f} px in the views of "
                f"{ts.ts_id} binned by --binning {p.binning}; beads need more than 1 px — pass a "
                "smaller --binning"
            )
        if bead_px > min(nx, ny) / p.binning / 2:
            raise InputError(
                f"--bead-diameter-nm {p.bead_diameter_nm:g}: {bead_px:.0f} px, more than half the "
                f"{nx} x {ny} px images of {ts.ts_id} — give the gold beads' diameter in nm"
            )


def check_reconstruct(p, source: TiltSeriesSet) -> None:
    """Every check of ``reconstruct`` that needs its input: binning, thickness and offsets vs the field."""
    check_binning(p.binning, source)
    for ts in _series(source):
        voxel_nm = ts.acquisition.pixel_size_a * p.binning / 10.0
        if p.thickness_px is not None and p.thickness_px * voxel_nm > MAX_THICKNESS_NM:
            raise InputError(
                f"--thickness-px {p.thickness_px}: {p.thickness_px * voxel_nm:.0f} nm at "
                f"{voxel_nm * 10:g} Å/voxel ({ts.ts_id}), thicker than any specimen "
                f"({MAX_THICKNESS_NM:g} nm at most); pass --thickness-px "
                f"{int(MAX_THICKNESS_NM / voxel_nm)} or less"
            )
        half_field_nm = max(ts.size) * ts.acquisition.pixel_size_a / 10.0 / 2.0
        if abs(p.x_offset_nm) > half_field_nm:
            raise InputError(
                f"--x-offset-nm {p.x_offset_nm:g}: moves the volume centre outside the "
                f"{2 * half_field_nm:.0f} nm wide field of {ts.ts_id}; pass a value within "
                f"±{half_field_nm:.0f}"
            )


def check_normalize(p, source: TiltSeriesSet) -> None:
    """Binned views keep 16 px at least."""
    check_binning(p.binning, source)


def check_xray_erase(p, source: TiltSeriesSet) -> None:
    """X-ray search needs images of at least 16 px."""
    for ts in _series(source):
        if min(ts.size) < MIN_BINNED_PX:
            raise InputError(
                f"{ts.ts_id}: {ts.size[0]} x {ts.size[1]} px images — the X-ray search needs "
                f"{MIN_BINNED_PX} x {MIN_BINNED_PX} px at least"
            )


def check_inputs(step_id: str, params, inputs: dict) -> list[str]:
    """Every check of ``step_id`` (:meth:`Step.validate`) against its loaded ``input`` set, for the
    runner and ``watch``: before a run exists. Returns the step's notes (parameters set for a mode
    that is not active)."""
    from tiltflow.workflow.steps.base import get_step

    return get_step(step_id).validate(params, inputs)
