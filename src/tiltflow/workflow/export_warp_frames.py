"""Warp export, frame-series side: what a tilt-series XML's ``MoviePath`` (``../warp_frameseries/
<movie>``) points to, so that WarpTools' ``ts_*`` commands can continue from the export.

Per view, in ``DIR/warp_frameseries/``: a ``<Movie>`` XML ``<stem>.xml`` (``DataDirectory`` = the
folder of the raw movie, whose header WarpTools reads for the image size; the view's CTF as
``<CTF>`` + 1x1x1 ``GridCTF*``; the frame shifts as ``GridMovementX/Y``, Å per frame; the neutral
grids WarpTools writes) and its averages ``average/<stem>.mrc`` (+ ``average/odd|even/<stem>.mrc``),
WarpTools' ``Movie.AveragePath``: the view of the exported set. A view imported as a stack has no
movie: a one-frame MRC ``<stem>.mrc`` stands in for it in the folder.

Shift sign: WarpTools finds a feature of the average at ``p - GridMovement`` in a frame (its
``GetPositionInAllFrames``); ours lies at ``p + shift`` (DESIGN.md §2), so the grid is ``-shift``.
"""

from __future__ import annotations

from pathlib import Path

from tiltflow.workflow.sets import CtfTomo, TiltSeries

FRAMES_DIR = "warp_frameseries"


def movie_names(ts: TiltSeries) -> list[str]:
    """Each view's movie file name (with extension); stacks get ``<tsId>_<order>_<angle>.mrc``."""
    names = []
    for im in ts.images:
        movie = im.movie
        names.append(
            Path(movie).name if movie else f"{ts.ts_id}_{im.acquisition_order:03d}_{im.tilt_angle_deg:.2f}.mrc"
        )
    return names


def _frame_shifts(ts: TiltSeries, order: int) -> tuple[list[list[float]], float] | None:
    """(per-frame shifts in unbinned movie px, the movie's pixel size Å) from the motion STAR."""
    folder = ts.motion_star_dir
    star = Path(folder) / f"{ts.ts_id}_{order:03d}.star" if folder else None
    if star is None or not star.is_file():
        return None
    import starfile

    blocks = starfile.read(star, always_dict=True)
    table = blocks["global_shift"].sort_values("rlnMicrographFrameNumber")
    pixel = float(blocks["general"]["rlnMicrographOriginalPixelSize"])
    return table[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=float).tolist(), pixel


def _mean_frame_movement(shifts_a: list[list[float]]) -> float:
    """WarpTools' ``MeanFrameMovement``: mean frame-to-frame movement (Å) over the first third."""
    from itertools import pairwise

    steps = [((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5 for a, b in pairwise(shifts_a)]
    first = steps[: max(1, len(steps) // 3)]
    return sum(first) / len(first) if first else 0.0


def _movie_xml(ts: TiltSeries, im, row: CtfTomo | None, data_dir: Path, path: Path) -> None:
    from tiltflow.io.warp import (
        DEFAULT_GRIDS,
        WarpTiltSeries,
        ctf_param_values,
        grid_element,
        write_warp_xml,
    )

    a = ts.acquisition
    um = 1e-4
    ctf = {
        "pixel_size_a": a.pixel_size_a,
        "voltage_kv": a.voltage_kv,
        "cs_mm": a.cs_mm,
        "amplitude": a.amplitude_contrast,
    }
    if row is not None:
        ctf.update(
            defocus_um=row.defocus_mean_a * um,
            defocus_delta_um=(row.defocus_u_a - row.defocus_v_a) * um,
            defocus_angle_deg=row.astigmatism_angle_deg,
            phase_shift_pi=row.phase_shift_rad / 3.141592653589793,
        )
    grids = [
        grid_element("GridCTF", [ctf.get("defocus_um", 0.0)]),
        grid_element("GridCTFDefocusDelta", [ctf.get("defocus_delta_um", 0.0)]),
        grid_element("GridCTFDefocusAngle", [ctf.get("defocus_angle_deg", 0.0)]),
        grid_element("GridCTFPhase", [ctf.get("phase_shift_pi", 0.0)]),
    ]
    motion = _frame_shifts(ts, im.acquisition_order)
    shifts_a = [[-x * motion[1], -y * motion[1]] for x, y in motion[0]] if motion else [[0.0, 0.0]]
    grids += [
        grid_element("GridMovementX", [s[0] for s in shifts_a]),
        grid_element("GridMovementY", [s[1] for s in shifts_a]),
        grid_element("GridLocalMovementX", [0.0]),
        grid_element("GridLocalMovementY", [0.0]),
    ]
    grids += [grid_element(tag, [value]) for tag, value in DEFAULT_GRIDS.items()]
    resolution = row.fit_resolution_a if row is not None and row.fit_resolution_a else 0
    attributes = {
        "DataDirectory": str(data_dir),
        "UnselectFilter": "False",
        "UnselectManual": "null",
        "CTFResolutionEstimate": f"{resolution:.3g}",
        "MeanFrameMovement": f"{_mean_frame_movement(shifts_a):.4g}",
        "MaskPercentage": "-1",
        "Bfactor": "0",
        "Weight": "1",
        "MagnificationCorrection": "1, 0, 0, 1",
    }
    params = {"CTF": ctf_param_values(**ctf)}
    write_warp_xml(path, WarpTiltSeries(attributes, {}, params, grids, ["CTF", *(g.tag for g in grids)], root="Movie"))


def write_frame_series(ts: TiltSeries, rows: list[CtfTomo] | None, out_dir: Path, notes: list[str]) -> list[Path]:
    """Per view of ``ts`` (tilt order): the Movie XML and averages under ``out_dir/warp_frameseries``."""
    import numpy as np

    from tiltflow.io.mrc import read_section, write_mrc

    frames = out_dir / FRAMES_DIR
    written: list[Path] = []
    missing = []
    pixel = ts.acquisition.pixel_size_a
    for i, (im, name) in enumerate(zip(ts.images, movie_names(ts), strict=False)):
        stem = Path(name).stem
        view = np.ascontiguousarray(read_section(im.file, im.section), dtype=np.float32)
        movie = im.movie
        if movie:
            data_dir = Path(movie).absolute().parent
            if not Path(movie).is_file():
                missing.append(name)
        else:  # a stack's view: a one-frame stand-in 'movie'
            data_dir = frames.absolute()
            written.append(write_mrc(frames / name, view[None], voxel_size_a=pixel))
        written.append(write_mrc(frames / "average" / f"{stem}.mrc", view, voxel_size_a=pixel))
        for key, sub in (("odd_file", "odd"), ("even_file", "even")):
            half = getattr(im, key)
            if half:
                written.append(
                    write_mrc(
                        frames / "average" / sub / f"{stem}.mrc",
                        np.ascontiguousarray(read_section(half, im.section), dtype=np.float32),
                        voxel_size_a=pixel,
                    )
                )
        xml = frames / f"{stem}.xml"
        _movie_xml(ts, im, rows[i] if rows is not None else None, data_dir, xml)
        written.append(xml)
    if missing:
        notes.append(
            f"{ts.ts_id}: {len(missing)} raw movie(s) not found (e.g. {missing[0]}); WarpTools reads "
            "their headers — keep them at the folder the frame-series XMLs name (DataDirectory)"
        )
    return written
