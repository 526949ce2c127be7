"""Alignment and reconstruction of a simulated tilt series: tiltflow against its peers, side by side.

Run (peers in their own venv, see benchmarks/README.md)::

    OMP_NUM_THREADS=1 /work/peers-venv/bin/python benchmarks/align_reconstruct.py [--small | --full-size]
        [--device cpu|cuda] [--repeats 3] [--seed 0] [--cache DIR] [--json FILE]

Data: one series of the demo simulator (``tiltflow.testing``), 41 tilts x 1024 x 1440 px at 2.76 Å/px
(``--small``: 21 x 512 x 512; ``--full-size``: 41 x 4092 x 5760), rendered noise-free with
``render_truth_tilt`` (gold, vesicles, protein, ice texture, CTF with defocus gradient, dose damage)
and given Poisson noise at the simulated dose (a whole tilt's counts). Everything runs at bin 4.

1. Alignment, on the binned noisy raw views from the mdoc's tilt axis: tiltflow coarse, fiducial
   and patch (coarse + projection matching) against ``torch-tiltxcorr`` (defaults, and with our
   low-pass). Accuracy is the honest residual ``alignment_residual_against_truth``: each method's
   .xf (unbinned px) applied to the TRUE 2-D bead positions from the truth, each bead's 3-D
   position fitted at the method's tilt angles, RMS of the 2-D residuals (unbinned px, and /4).
2. Reconstruction, the same volume for every method (views aligned with the TRUE geometry, bin 4,
   thickness 200 nm): tiltflow WBP against ASTRA's CPU ``FBP`` slice by slice (2-D parallel beam,
   ``linear`` projector) and ``torch-fourier-slice`` back-projection; tiltflow SIRT against ASTRA's
   CPU ``SIRT`` at equal iterations on a slab of rows (ASTRA's CPU SIRT takes ~1.6 s per slice).
   Quality: (a) Pearson correlation of the reconstruction of the noisy views with the same
   method's reconstruction of the noise-free views (CTF data; the issue's measure); (b) the phantom:
   the specimen voxelised at bin 4 and projected analytically (no CTF, linear density, Poisson noise
   at the same dose), so no method's projector made the data; whole-volume Pearson r and the
   correlation inside the measured wedge below 0.25 cycles/voxel.

Every timed item runs ``--repeats`` times, interleaved (the order rotates each round), and the
minimum wall and CPU time are reported; the load average is printed. ASTRA's 3-D and CUDA
algorithms are used only with ``--device cuda`` when ``astra.use_cuda()`` (they crash otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tiltflow.core.align import align_fiducial, alignment_residual_against_truth, coarse_align
from tiltflow.core.align.projection_matching import MatchingOptions, projection_matching_align
from tiltflow.core.fourier import shift_image_2d
from tiltflow.core.geometry import xf_from_geometry
from tiltflow.core.reconstruct import apply_xf, bin_views, sirt, wbp
from tiltflow.core.transforms import geometry_to_xf
from tiltflow.testing.acquisition import plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import render_truth_tilt, series_rng
from tiltflow.testing.phantom import (
    BILAYER_NM,
    GOLD_ABSORPTION_LENGTH_A,
    GOLD_PHASE_RAD_PER_A,
    HEAD_GROUP_NM,
    PROTEIN_PHASE_RAD_PER_A,
    Specimen,
    project_specimen,
    specimen_from_dict,
)

BIN = 4
THICKNESS_NM = 200.0  # tomogram (the reconstruct step's default)
ALIGN_Z_NM = 150.0  # patch route's slab (the align step's default)
PATCH_ITERATIONS = 5  # the align step's default
SIZES = {  # n_tilts, ny, nx, tilt step (deg): all span +-60 deg
    "small": (21, 512, 512, 6.0),
    "default": (41, 1024, 1440, 3.0),
    "full": (41, 4092, 5760, 3.0),
}


# --- data ------------------------------------------------------------------------------------------


def make_series(size: str, seed: int, cache: Path | None, device: str) -> dict:
    """Noise-free and noisy raw views ``(t, ny, nx)`` in tilt order, and the series truth."""
    t, ny, nx, step = SIZES[size]
    cfg = DemoConfig(n_series=1, n_tilts=t, tilt_step_deg=step, size=(nx, ny), seed=seed)
    truth = plan_series(cfg, 0, series_rng(cfg, 0))
    order = truth["tilt_order_by_angle"]
    stem = f"series_{t}x{ny}x{nx}_seed{seed}"
    if cache is not None and (cache / f"{stem}_noisy.npy").exists():
        clean = torch.from_numpy(np.load(cache / f"{stem}_clean.npy"))
        noisy = torch.from_numpy(np.load(cache / f"{stem}_noisy.npy").astype(np.float32))
    else:
        t0 = time.perf_counter()
        clean = torch.stack(
            [render_truth_tilt(truth, i, device=device).cpu() * cfg.n_frames for i in order]
        )  # a whole tilt's expected counts
        if device == "cuda":  # numpy's Poisson draw takes minutes at full size
            gen = torch.Generator(device="cuda").manual_seed(seed)
            noisy = torch.stack([torch.poisson(c.to(device).clamp_min(0), generator=gen).cpu() for c in clean])
        else:
            rng = np.random.default_rng(seed)
            noisy = torch.from_numpy(rng.poisson(clean.numpy().clip(0, None)).astype(np.float32))
        print(f"rendered {t} x {ny} x {nx} in {time.perf_counter() - t0:.0f} s")
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cache / f"{stem}_clean.npy", clean.numpy())
            np.save(cache / f"{stem}_noisy.npy", noisy.numpy().astype(np.uint16))
    tilts = [truth["tilts"][i] for i in order]
    proj = torch.tensor([tl["bead_projections_px"] for tl in tilts], dtype=torch.float64)
    proj[~torch.tensor([tl["bead_in_image"] for tl in tilts])] = math.nan
    return {
        "config": cfg,
        "truth": truth,
        "clean": clean,
        "noisy": noisy,
        "shape": (ny, nx),
        "beads_true_px": proj.permute(1, 0, 2),  # (n, t, 2) raw unbinned px
        "mdoc_angles": torch.tensor([tl["mdoc_tilt_angle_deg"] for tl in tilts], dtype=torch.float64),
        "true_angles": torch.tensor([tl["true_tilt_angle_deg"] for tl in tilts], dtype=torch.float64),
        "xf_true": torch.tensor(truth["xf_rows"], dtype=torch.float64),
    }


def aligned_shape(shape_b: tuple[int, int], axis_deg: float) -> tuple[int, int]:
    """Aligned view shape: rows along the tilt axis (axis near 90 deg swaps the raw sides)."""
    sideways = abs(math.sin(math.radians(axis_deg))) > abs(math.cos(math.radians(axis_deg)))
    return (shape_b[1], shape_b[0]) if sideways else shape_b


def binned_specimen(spec: Specimen, b: int) -> Specimen:
    """The specimen in pixels of views binned by ``b``."""
    return Specimen(
        bead_xyz_px=spec.bead_xyz_px / b,
        bead_radius_px=spec.bead_radius_px / b,
        vesicle_xyz_px=spec.vesicle_xyz_px / b,
        vesicle_radius_px=spec.vesicle_radius_px / b,
        blob_xyz_px=spec.blob_xyz_px / b,
        blob_sigma_px=spec.blob_sigma_px / b,
        ice_thickness_px=spec.ice_thickness_px / b,
        pixel_size_a=spec.pixel_size_a * b,
    )


def objects_inside(spec: Specimen, shape: tuple[int, int, int]) -> Specimen:
    """Only the objects lying wholly inside the box ``(nz, ny, nx)`` across x and z (the volume
    then holds all the material its views see; rows along y are independent, so y may clip)."""
    nz, _, nx = shape

    def keep(xyz: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (xyz[:, 0].abs() + r <= (nx - 1) / 2) & (xyz[:, 2].abs() + r <= (nz - 1) / 2)

    b = keep(spec.bead_xyz_px, torch.full((len(spec.bead_xyz_px),), spec.bead_radius_px))
    v = keep(spec.vesicle_xyz_px, spec.vesicle_radius_px)
    g = keep(spec.blob_xyz_px, 4 * spec.blob_sigma_px)
    return Specimen(
        bead_xyz_px=spec.bead_xyz_px[b],
        bead_radius_px=spec.bead_radius_px,
        vesicle_xyz_px=spec.vesicle_xyz_px[v],
        vesicle_radius_px=spec.vesicle_radius_px[v],
        blob_xyz_px=spec.blob_xyz_px[g],
        blob_sigma_px=spec.blob_sigma_px[g],
        ice_thickness_px=spec.ice_thickness_px,
        pixel_size_a=spec.pixel_size_a,
    )


def _add_occupancy(grid, centre_xyz, outer_r, shells, ss=2):
    """Add the sub-sampled occupancy of spheres/shells (phantom.py's (a, b) depths) to ``grid``."""
    nz, ny, nx = grid.shape
    c = [centre_xyz[2] + (nz - 1) / 2, centre_xyz[1] + (ny - 1) / 2, centre_xyz[0] + (nx - 1) / 2]
    lo = [max(math.floor(ci - outer_r) - 1, 0) for ci in c]
    hi = [min(math.ceil(ci + outer_r) + 2, n) for ci, n in zip(c, grid.shape, strict=False)]
    if any(a >= b for a, b in zip(lo, hi, strict=False)):
        return
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    z, y, x = ((np.arange(a, b)[:, None] + sub).ravel() - ci for a, b, ci in zip(lo, hi, c, strict=False))
    r2 = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
    occ = np.zeros_like(r2, dtype=np.float32)
    for a, b in shells:
        occ += r2 <= (outer_r - a) ** 2
        if outer_r - b > 0:
            occ -= r2 <= (outer_r - b) ** 2
    dims = [hh - ll for ll, hh in zip(lo, hi, strict=False)]
    occ = occ.reshape(dims[0], ss, dims[1], ss, dims[2], ss).mean(axis=(1, 3, 5))
    grid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += occ


def voxelize_specimen(spec: Specimen, shape: tuple[int, int, int]) -> torch.Tensor:
    """Density ``(nz, ny, nx)`` whose line integrals (px) are ``phase_rad + gold_thickness_a / 120 Å``
    of ``project_specimen`` (voxel (iz, iy, ix) = specimen point (ix - (nx-1)/2, ...))."""
    nz, ny, nx = shape
    soft = np.zeros(shape, np.float32)
    gold = np.zeros(shape, np.float32)
    nm = 10.0 / spec.pixel_size_a
    leaflets = [(0.0, HEAD_GROUP_NM * nm), ((BILAYER_NM - HEAD_GROUP_NM) * nm, BILAYER_NM * nm)]
    for xyz, r in zip(spec.vesicle_xyz_px.tolist(), spec.vesicle_radius_px.tolist(), strict=False):
        _add_occupancy(soft, xyz, r, leaflets)
    for xyz in spec.bead_xyz_px.tolist():
        _add_occupancy(gold, xyz, spec.bead_radius_px, [(0.0, math.inf)], ss=4)
    axes = [np.arange(n) - (n - 1) / 2 for n in (nx, ny, nz)]
    for (bx, by, bz), s in zip(spec.blob_xyz_px.tolist(), spec.blob_sigma_px.tolist(), strict=False):
        idx = []
        for a, centre in zip(axes, (bx, by, bz), strict=False):
            keep = np.nonzero(np.abs(a - centre) <= 4 * s)[0]
            idx.append(keep)
        if any(k.size == 0 for k in idx):
            continue
        gx, gy, gz = (np.exp(-0.5 * ((a[k] - ce) / s) ** 2) for a, k, ce in zip(axes, idx, (bx, by, bz), strict=False))
        soft[np.ix_(idx[2], idx[1], idx[0])] += gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    px = spec.pixel_size_a  # rad/Å * Å/px = rad per px of path; gold also absorbs (1/120 Å * Å/px)
    vol = soft * (PROTEIN_PHASE_RAD_PER_A * px) + gold * (GOLD_PHASE_RAD_PER_A * px + px / GOLD_ABSORPTION_LENGTH_A)
    return torch.from_numpy(vol)


def phantom_data(data: dict, nz: int, shape_al: tuple[int, int], seed: int) -> dict:
    """Phantom volume at bin 4 (the objects inside the reconstructed box) and its analytic
    projections (noise-free, noisy) at the true angles."""
    truth, cfg = data["truth"], data["config"]
    spec = objects_inside(binned_specimen(specimen_from_dict(truth["specimen"]), BIN), (nz, *shape_al))
    volume = voxelize_specimen(spec, (nz, *shape_al))
    rng = np.random.default_rng([seed, 11])
    clean, noisy = [], []
    for ang in data["true_angles"].tolist():
        p = project_specimen(spec, tilt_angle_deg=ang, tilt_axis_deg=0.0, shift_px=(0.0, 0.0), image_shape=shape_al)
        dens = (p.phase_rad + p.gold_thickness_a / GOLD_ABSORPTION_LENGTH_A).numpy().astype(np.float64)
        # electrons per binned pixel through the ice: e/Å^2 * Å^2/px * inelastic loss
        n0 = (
            cfg.dose_per_tilt_e_a2
            * spec.pixel_size_a**2
            * math.exp(-cfg.ice_thickness_nm / math.cos(math.radians(ang)) / cfg.ice_mean_free_path_nm)
        )
        counts = rng.poisson(n0 * np.exp(-dens))
        clean.append(dens)
        noisy.append(-np.log(np.maximum(counts, 0.5) / n0))
    return {
        "volume": volume,
        "clean": torch.from_numpy(np.stack(clean).astype(np.float32)),
        "noisy": torch.from_numpy(np.stack(noisy).astype(np.float32)),
    }


# --- measures --------------------------------------------------------------------------------------


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


def wedge_band_correlation(a: torch.Tensor, b: torch.Tensor, max_tilt_deg: float, k_max=0.25) -> float:
    """Correlation over the Fourier components the series measures (|kz| <= tan(max)|kx|, k < k_max)."""
    fa, fb = torch.fft.rfftn(a.double()), torch.fft.rfftn(b.double())
    nz, ny, nx = a.shape
    kz = torch.fft.fftfreq(nz)[:, None, None]
    ky = torch.fft.fftfreq(ny)[None, :, None]
    kx = torch.fft.rfftfreq(nx)[None, None, :]
    k = torch.sqrt(kx**2 + ky**2 + kz**2)
    m = (kz.abs() <= math.tan(math.radians(max_tilt_deg)) * kx.abs() + 1e-9) & (k > 0) & (k < k_max)
    num = (fa[m] * fb[m].conj()).real.sum()
    return float(num / torch.sqrt((fa[m].abs() ** 2).sum() * (fb[m].abs() ** 2).sum()))


def honest_residual(xf_unbinned, angles, data) -> float:
    return alignment_residual_against_truth(xf_unbinned.cpu(), angles.cpu(), data["beads_true_px"], data["shape"])


# --- peers -----------------------------------------------------------------------------------------


def import_peer(name: str):
    try:
        return __import__(name)
    except ImportError as e:
        print(f"  [{name} not installed ({e}); see benchmarks/README.md]")
        return None


def tiltxcorr_xf(module, views_b, angles, axis_deg, lowpass_a=None, pixel_a=None) -> torch.Tensor:
    """torch-tiltxcorr's shifts (dy, dx that centre each image: a feature at raw p sits at p + shift
    once shifted) as .xf at bin 1: raw-image shift s = -(dx, dy) (core/geometry.py)."""
    shifts_yx = module.tiltxcorr(
        views_b,
        angles.float().to(views_b.device),
        tilt_axis_angle=axis_deg,
        pixel_spacing_angstroms=pixel_a,
        lowpass_angstroms=lowpass_a,
    )
    s = -shifts_yx.flip(-1).double().cpu() * BIN
    return geometry_to_xf(axis_deg, s)


def check_astra_geometry(astra) -> None:
    """ASTRA 2-D parallel: detector u = x cos + z sin with z = (rows-1)/2 - row (flip rows to ours)."""
    vg = astra.create_vol_geom(9, 11)
    pg = astra.create_proj_geom("parallel", 1.0, 31, np.deg2rad([0.0, 90.0, -90.0]))
    pid = astra.create_projector("linear", pg, vg)
    vol = np.zeros((9, 11), np.float32)
    vol[1, 8] = 1.0  # x = 8 - 5 = 3, z = 4 - 1 = 3
    sid, sino = astra.create_sino(vol, pid)
    u = (sino * np.arange(31)).sum(1) / sino.sum(1) - 15
    astra.data2d.delete(sid)
    astra.projector.delete(pid)
    if not np.allclose(u, [3.0, 3.0, -3.0], atol=0.1):
        raise RuntimeError(f"ASTRA geometry differs from the one assumed here: {u}")


def astra_reconstruct(
    astra, views: np.ndarray, angles_deg, nz: int, algorithm: str, iterations=1, filter_type="ram-lak", cuda=False
) -> np.ndarray:
    """Slice-by-slice ASTRA 2-D reconstruction of aligned views ``(t, ny, nx)`` -> ``(nz, ny, nx)``."""
    _, ny, nx = views.shape
    vg = astra.create_vol_geom(nz, nx)
    pg = astra.create_proj_geom("parallel", 1.0, nx, np.deg2rad(np.asarray(angles_deg, np.float64)))
    pid = astra.create_projector("cuda" if cuda else "linear", pg, vg)
    sid = astra.data2d.create("-sino", pg, 0)
    vid = astra.data2d.create("-vol", vg, 0)
    cfg = astra.astra_dict(algorithm + ("_CUDA" if cuda else ""))
    cfg.update(ProjectorId=pid, ProjectionDataId=sid, ReconstructionDataId=vid)
    if algorithm == "FBP":
        cfg["option"] = {"FilterType": filter_type}
    out = np.empty((nz, ny, nx), np.float32)
    try:
        for y in range(ny):
            astra.data2d.store(sid, np.ascontiguousarray(views[:, y, :]))
            astra.data2d.store(vid, 0)
            alg = astra.algorithm.create(cfg)
            astra.algorithm.run(alg, iterations)
            astra.algorithm.delete(alg)
            out[:, y, :] = astra.data2d.get_shared(vid)[::-1]
    finally:
        astra.data2d.delete([sid, vid])
        astra.projector.delete(pid)
    return out


def _shift_axis(x: torch.Tensor, shift: float, dim: int) -> torch.Tensor:
    """Fourier shift along one axis: a feature at i moves to i + shift."""
    if shift == 0:
        return x
    n = x.shape[dim]
    k = torch.fft.rfftfreq(n, device=x.device).reshape([-1 if d == dim % x.ndim else 1 for d in range(x.ndim)])
    return torch.fft.irfft(torch.fft.rfft(x, dim=dim) * torch.exp(-2j * math.pi * k * shift), n=n, dim=dim)


def tfs_reconstruct(tfs, views: torch.Tensor, angles_deg, nz: int) -> torch.Tensor:
    """torch-fourier-slice ``backproject_2d_to_3d`` of aligned views into a cube (centre d // 2),
    cropped to ``(nz, ny, nx)`` on our grid (centre (n-1)/2; half-pixel Fourier shifts)."""
    t, ny, nx = views.shape
    d = 2 * math.ceil(max(ny, nx, nz) / 2)
    oy, ox = (d - ny) // 2, (d - nx) // 2
    padded = views.new_zeros((t, d, d))
    padded[:, oy : oy + ny, ox : ox + nx] = views - views.mean(dim=(-2, -1), keepdim=True)
    s = torch.tensor([d / 2 - ((nx - 1) / 2 + ox), d / 2 - ((ny - 1) / 2 + oy)], device=views.device)
    padded = shift_image_2d(padded, s.to(padded.dtype).expand(t, 2))
    th = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float32, device=views.device))
    c, sn = torch.cos(th), torch.sin(th)
    o, i = torch.zeros_like(c), torch.ones_like(c)
    # R_y(theta)^T acting on xyz: u = x cos + z sin (checked against project_3d_to_2d)
    rot = torch.stack([torch.stack([c, o, -sn], -1), torch.stack([o, i, o], -1), torch.stack([sn, o, c], -1)], -2)
    vol = tfs.backproject_2d_to_3d(padded, rot, pad_factor=2.0)
    for dim, n in ((0, nz), (1, ny), (2, nx)):
        off = d / 2 - (n - 1) / 2
        vol = _shift_axis(vol, -(off - math.floor(off)), dim)
        vol = vol.narrow(dim, math.floor(off), n)
    return vol


# --- timing ----------------------------------------------------------------------------------------


def run_interleaved(items: dict, repeats: int, sync) -> dict:
    """Run every ``name -> fn`` ``repeats`` times in rotating order; min wall / CPU s and a result.
    An item that raises is reported (traceback) and left out, so one failure costs only its row."""
    names = list(items)
    out: dict[str, dict] = {n: {"wall": [], "cpu": [], "result": None} for n in names}
    failed: set[str] = set()
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            if n in failed:
                continue
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                res = items[n]()
                sync()
            except Exception:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"    {n}: FAILED\n{traceback.format_exc()}", flush=True)
                failed.add(n)
                continue
            out[n]["wall"].append(time.perf_counter() - t0)
            out[n]["cpu"].append(time.process_time() - c0)
            if out[n]["result"] is None:
                out[n]["result"] = res
            print(f"    {n}: {out[n]['wall'][-1]:.2f} s", flush=True)
    for n in failed:
        del out[n]
    for n in out:
        out[n]["wall_min"], out[n]["cpu_min"] = min(out[n]["wall"]), min(out[n]["cpu"])
    return out


def guarded(fn, *args) -> dict:
    """``fn(*args)``, or ``{}`` with the traceback printed: one broken part leaves the others' tables."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        print(f"{fn.__name__}: FAILED\n{traceback.format_exc()}", flush=True)
        return {}


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    if not rows:
        print(f"\n{title}: nothing to show")
        return

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v))

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False)))


# --- the two benchmarks ----------------------------------------------------------------------------


def bench_alignment(data: dict, vb: torch.Tensor, args, sync) -> dict:
    """Time and honest residual of every alignment method on the binned noisy views ``vb``."""
    truth, cfg = data["truth"], data["config"]
    axis0, angles = truth["mdoc_tilt_axis_deg"], data["mdoc_angles"]
    px_b = cfg.pixel_size_a * BIN

    def unbinned(xf):
        xf = xf.detach().double().cpu().clone()
        xf[:, 4:] *= BIN
        return xf

    def coarse():
        c = coarse_align(vb, angles, tilt_axis_deg=axis0)
        return unbinned(c.xf), angles, axis0

    def fiducial():
        sol = align_fiducial(
            vb, angles, tilt_axis_deg=axis0, bead_diameter_px=cfg.bead_diameter_nm * 10.0 / px_b
        ).solution
        return unbinned(sol.xf), sol.tilt_angles_deg, sol.tilt_axis_deg

    def patch(start_from_coarse=True):
        c = coarse_align(vb, angles, tilt_axis_deg=axis0) if start_from_coarse else None
        pm = projection_matching_align(
            vb,
            angles,
            tilt_axis_deg=axis0,
            align_z_px=ALIGN_Z_NM * 10.0 / px_b,
            pixel_size_a=px_b,
            initial_shifts_px=None if c is None else c.shifts_px,
            binning=1,
            options=MatchingOptions(iterations=PATCH_ITERATIONS),
        )
        return unbinned(pm.xf), pm.tilt_angles_deg, pm.tilt_axis_deg

    items = {"tiltflow coarse": coarse}
    txc = import_peer("torch_tiltxcorr")
    if txc is not None:
        items["torch-tiltxcorr (defaults)"] = lambda: (tiltxcorr_xf(txc, vb, angles, axis0), angles, axis0)
        items["torch-tiltxcorr (low-pass 0.25/px)"] = lambda: (
            tiltxcorr_xf(txc, vb, angles, axis0, lowpass_a=4 * px_b, pixel_a=px_b),
            angles,
            axis0,
        )
    items["tiltflow fiducial"] = fiducial
    items["tiltflow patch (coarse + PM)"] = patch
    if args.patch_as_step:
        items["tiltflow patch (PM alone, as the align step)"] = lambda: patch(False)
    print(f"\nalignment at bin {BIN} ({vb.shape[0]} x {vb.shape[1]} x {vb.shape[2]}); {load()}")
    res = run_interleaved(items, args.repeats, sync)
    rows = {}
    for ref_name, xf, ang, axis in (
        ("(no alignment: mdoc axis, zero shifts)", xf_from_geometry(axis0, torch.zeros(len(angles), 2)), angles, axis0),
        ("(truth: true .xf, true angles)", data["xf_true"], data["true_angles"], truth["tilt_axis_deg"]),
    ):
        rows[ref_name] = {
            "residual_px": honest_residual(xf, ang, data),
            "axis_error_deg": axis - truth["tilt_axis_deg"],
        }
    for name, r in res.items():
        xf, ang, axis = r["result"]
        rows[name] = {
            "wall_s": r["wall_min"],
            "cpu_s": r["cpu_min"],
            "residual_px": honest_residual(xf, ang, data),
            "axis_error_deg": float(axis) - truth["tilt_axis_deg"],
            "walls": r["wall"],
        }
    print_table(
        f"Alignment at bin {BIN}: time (min of {args.repeats}) and honest residual against the true bead positions",
        ["method", "wall s", "cpu s", "residual px (bin 1)", f"residual px (bin {BIN})", "axis error deg"],
        [
            [n, r.get("wall_s"), r.get("cpu_s"), r["residual_px"], r["residual_px"] / BIN, r["axis_error_deg"]]
            for n, r in rows.items()
        ],
    )
    return rows


def _recon_methods(args, nz: int) -> dict:
    """name -> (kind, fn(views (t, ny, nx) tensor on the device, angles) -> volume tensor on CPU)."""
    dev = args.device
    methods: dict[str, tuple[str, Callable[..., torch.Tensor]]] = {
        "tiltflow WBP": ("wbp", lambda v, a: wbp(v, a, thickness_px=nz).cpu())
    }
    astra = import_peer("astra")
    cuda = False
    if astra is not None:
        check_astra_geometry(astra)
        cuda = dev == "cuda" and bool(astra.use_cuda())  # never touch ASTRA's CUDA/3-D code otherwise
        tag = "FBP_CUDA" if cuda else "FBP (CPU)"
        for filt in ("ram-lak", "hann"):
            methods[f"astra {tag}, {filt}, slice by slice"] = (
                "wbp",
                lambda v, a, f=filt: torch.from_numpy(
                    astra_reconstruct(astra, v.cpu().numpy(), a.tolist(), nz, "FBP", filter_type=f, cuda=cuda)
                ),
            )
    tfs = import_peer("torch_fourier_slice")
    if tfs is not None:
        methods["torch-fourier-slice backproject"] = ("wbp", lambda v, a: tfs_reconstruct(tfs, v, a, nz).cpu())
    n = args.sirt_iterations
    methods[f"tiltflow SIRT {n} it"] = ("sirt", lambda v, a: sirt(v, a, thickness_px=nz, iterations=n).cpu())
    if astra is not None:
        methods[f"astra {'SIRT_CUDA' if cuda else 'SIRT (CPU)'} {n} it, slice by slice"] = (
            "sirt",
            lambda v, a: torch.from_numpy(
                astra_reconstruct(astra, v.cpu().numpy(), a.tolist(), nz, "SIRT", iterations=n, cuda=cuda)
            ),
        )
    return methods


def _tfs_fits(views_shape, nz: int, device: str) -> bool:
    """torch-fourier-slice pads to a cube of side 2d: about 6 float32 copies of (2d)^3 at the peak."""
    d = 2 * math.ceil(max(*views_shape[-2:], nz) / 2)
    need = 6 * (2 * d) ** 3 * 4
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    if need > 0.6 * free:
        print(f"  [torch-fourier-slice skipped: its {2 * d}^3 padded cube needs ~{need / 2**30:.0f} GiB]")
        return False
    return True


def _contrast(views: torch.Tensor) -> torch.Tensor:
    """Counts -> contrast ``I / mean - 1`` per view."""
    return views / views.mean(dim=(-2, -1), keepdim=True) - 1.0


def bench_reconstruction(data: dict, vb: torch.Tensor, args, sync) -> dict:
    """Time and quality of every reconstruction method on the same aligned bin-4 views."""
    truth, cfg, dev = data["truth"], data["config"], args.device
    nz = round(THICKNESS_NM * 10.0 / (cfg.pixel_size_a * BIN))
    shape_al = aligned_shape((vb.shape[-2], vb.shape[-1]), truth["tilt_axis_deg"])
    xf_b = data["xf_true"].clone()
    xf_b[:, 4:] /= BIN
    xf_b = xf_b.to(dev)
    angles = data["true_angles"]
    print(
        f"\nreconstruction: {len(angles)} aligned views of {shape_al[0]} x {shape_al[1]} (true geometry, bin "
        f"{BIN}) -> {nz} x {shape_al[0]} x {shape_al[1]} voxels; {load()}"
    )
    ali = run_interleaved({"tiltflow apply .xf": lambda: apply_xf(vb, xf_b, out_shape=shape_al)}, args.repeats, sync)
    noisy = _contrast(ali["tiltflow apply .xf"]["result"])
    clean = _contrast(apply_xf(bin_views(data["clean"].to(dev), BIN), xf_b, out_shape=shape_al))
    phantom = phantom_data(data, nz, shape_al, args.seed)
    methods = _recon_methods(args, nz)
    if "torch-fourier-slice backproject" in methods and not _tfs_fits(shape_al, nz, dev):
        del methods["torch-fourier-slice backproject"]
    k = min(args.sirt_rows, shape_al[0])
    rows = slice((shape_al[0] - k) // 2, (shape_al[0] - k) // 2 + k)

    def part(kind, v):
        return v if kind == "wbp" else v[:, rows]

    def bound(kind: str, f: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: f(part(kind, noisy), angles)

    items = {n: bound(kind, f) for n, (kind, f) in methods.items()}
    items[f"tiltflow SIRT {args.sirt_iterations} it, whole volume"] = lambda: sirt(
        noisy, angles, thickness_px=nz, iterations=args.sirt_iterations
    ).cpu()
    res = run_interleaved(items, args.repeats, sync)
    out = {"apply_xf": {"wall_s": ali["tiltflow apply .xf"]["wall_min"], "cpu_s": ali["tiltflow apply .xf"]["cpu_min"]}}
    tilt_max = float(angles.abs().max())
    for name, r in res.items():
        row = {"wall_s": r["wall_min"], "cpu_s": r["cpu_min"], "walls": r["wall"]}
        if name in methods:
            kind, f = methods[name]
            ref = phantom["volume"] if kind == "wbp" else phantom["volume"][:, rows]
            vol_b = f(part(kind, phantom["noisy"].to(dev)), angles)
            row.update(
                kind=kind,
                r_noise_free_rec=pearson(r["result"], f(part(kind, clean), angles)),
                r_phantom=pearson(vol_b, ref),
                r_phantom_wedge=wedge_band_correlation(vol_b, ref, tilt_max),
                r_phantom_noise_free=pearson(f(part(kind, phantom["clean"].to(dev)), angles), ref),
            )
        else:
            row["kind"] = "sirt-whole"
        out[name] = row
    for kind, label in (
        ("wbp", f"whole volume {nz} x {shape_al[0]} x {shape_al[1]}"),
        ("sirt", f"slab of {k} rows ({nz} x {k} x {shape_al[1]}), {args.sirt_iterations} iterations"),
    ):
        print_table(
            f"Reconstruction ({'WBP-like' if kind == 'wbp' else 'SIRT'}, {label}): time (min of {args.repeats}) and "
            "quality (Pearson r)",
            [
                "method",
                "wall s",
                "cpu s",
                "r vs own noise-free rec (CTF data)",
                "r vs phantom (noisy)",
                "r in wedge k<0.25",
                "r vs phantom (noise-free)",
            ],
            [
                [
                    n,
                    r["wall_s"],
                    r["cpu_s"],
                    r["r_noise_free_rec"],
                    r["r_phantom"],
                    r["r_phantom_wedge"],
                    r["r_phantom_noise_free"],
                ]
                for n, r in out.items()
                if r.get("kind") == kind
            ],
        )
    whole = [n for n, r in out.items() if r.get("kind") == "sirt-whole"]
    if whole:
        print(
            f"{whole[0]}: {out[whole[0]]['wall_s']:.3g} s wall, {out[whole[0]]['cpu_s']:.3g} s cpu; "
            f"tiltflow apply .xf: {out['apply_xf']['wall_s']:.3g} s"
        )
    return out


def summary(align: dict, recon: dict, repeats: int) -> None:
    """Peer time / tiltflow time, accuracy side by side."""
    rows = []
    for name, r in align.items():
        if name.startswith("torch-tiltxcorr"):
            for mine in ("tiltflow coarse", "tiltflow fiducial", "tiltflow patch (coarse + PM)"):
                if mine not in align:
                    continue
                m = align[mine]
                rows.append(
                    [
                        f"{name} vs {mine}",
                        r["wall_s"] / m["wall_s"],
                        r["cpu_s"] / m["cpu_s"],
                        f"{r['residual_px']:.2f} vs {m['residual_px']:.2f} px",
                    ]
                )
    wbp_ours = next((r for n, r in recon.items() if n == "tiltflow WBP"), None)
    sirt_ours = next((r for n, r in recon.items() if r.get("kind") == "sirt" and n.startswith("tiltflow")), None)
    for name, r in recon.items():
        if r.get("kind") in ("wbp", "sirt") and not name.startswith("tiltflow"):
            m = wbp_ours if r["kind"] == "wbp" else sirt_ours
            if m is None:
                continue
            rows.append(
                [
                    f"{name} vs tiltflow {r['kind'].upper()}",
                    r["wall_s"] / m["wall_s"],
                    r["cpu_s"] / m["cpu_s"],
                    (
                        f"phantom r {r['r_phantom']:.3f} vs {m['r_phantom']:.3f}; "
                        f"wedge {r['r_phantom_wedge']:.3f} vs {m['r_phantom_wedge']:.3f}"
                    ),
                ]
            )
    print_table(
        f"Peers against tiltflow (time ratio = peer / tiltflow, min of {repeats}; > 1: tiltflow faster)",
        ["pair", "wall ratio", "cpu ratio", "accuracy (peer vs tiltflow)"],
        rows,
    )


def peer_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("torch", "torch-tiltxcorr", "astra-toolbox", "torch-fourier-slice"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} (not installed)")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="21 x 512 x 512 (quick)")
    size.add_argument("--full-size", action="store_true", help="41 x 4092 x 5760 (a GPU machine)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--sirt-iterations", type=int, default=20)
    ap.add_argument("--sirt-rows", type=int, default=32, help="rows of the slab both SIRTs reconstruct")
    ap.add_argument(
        "--patch-as-step",
        action="store_true",
        help="also time projection matching without the coarse start (as the align step calls it)",
    )
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping the rendered series between runs")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    key = "small" if args.small else "full" if args.full_size else "default"
    t, ny, nx, _ = SIZES[key]
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} torch thread(s)"
    print(
        f"align_reconstruct: {t} x {ny} x {nx} series, bin {BIN}, {dev_name}; {peer_versions()}; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; {load()}"
    )
    data = make_series(key, args.seed, args.cache, args.device)
    tr = data["truth"]
    print(
        f"truth: tilt axis {tr['tilt_axis_deg']:.2f} deg (mdoc {tr['mdoc_tilt_axis_deg']:.1f}), tilt offset "
        f"{tr['tilt_offset_deg']:.2f} deg, {int(torch.isfinite(data['beads_true_px'][..., 0]).any(1).sum())} beads "
        f"seen, stage shifts up to {max(abs(v) for tl in tr['tilts'] for v in tl['stage_shift_px']):.1f} px"
    )
    noisy = data["noisy"].to(args.device)
    binned = run_interleaved({"tiltflow bin x4": lambda: bin_views(noisy, BIN)}, args.repeats, sync)
    vb = binned["tiltflow bin x4"]["result"]
    align = guarded(bench_alignment, data, vb, args, sync)
    recon = guarded(bench_reconstruction, data, vb, args, sync)
    stages = [["bin x4 (Fourier crop)", binned["tiltflow bin x4"]["wall_min"], binned["tiltflow bin x4"]["cpu_min"]]]
    stages += [
        [n.removeprefix("tiltflow "), r["wall_s"], r["cpu_s"]] for n, r in align.items() if n.startswith("tiltflow")
    ]
    if "apply_xf" in recon:
        stages.append(["apply .xf (aligned stack, bin 4)", recon["apply_xf"]["wall_s"], recon["apply_xf"]["cpu_s"]])
    stages += [
        [n.removeprefix("tiltflow "), r["wall_s"], r["cpu_s"]] for n, r in recon.items() if n.startswith("tiltflow")
    ]
    print_table(
        f"tiltflow time per stage ({t} x {ny} x {nx}, bin {BIN}, min of {args.repeats})",
        ["stage", "wall s", "cpu s"],
        stages,
    )
    summary(align, recon, args.repeats)
    print(f"\n{load()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": [t, ny, nx],
                    "device": dev_name,
                    "versions": peer_versions(),
                    "alignment": align,
                    "reconstruction": recon,
                },
                indent=1,
                default=float,
            )
        )


if __name__ == "__main__":
    main()
