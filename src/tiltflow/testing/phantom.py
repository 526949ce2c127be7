"""The simulated specimen: gold beads, lipid vesicles and protein-like blobs in an ice slab.

Positions are in the specimen frame of ``tiltflow.core.geometry`` (pixels of the tilt images,
origin at the volume centre, tilt axis along +y, z along the beam at 0° tilt). Objects project
analytically: a sphere of radius R has projected thickness ``2 sqrt(R² - r²)``, a shell is the
outer minus the inner sphere, and a 3-D Gaussian of width sigma projects to a 2-D Gaussian of peak
``sigma sqrt(2 pi)``. ``project_specimen`` turns thicknesses into a phase (rad) and a gold thickness
(Å) on a canvas of raw tilt-image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tiltflow.core import geometry

# Phase per Å of projected material (300 kV): sigma_e ~ 6.5e-4 rad/(V Å) times the mean inner
# potential over vitreous ice (~3 V for protein and lipid head groups). Gold's phase is kept small
# (real: ~0.016 rad/Å) so the linear image model stays sane; gold is dark by its amplitude term.
PROTEIN_PHASE_RAD_PER_A = 2.0e-3
GOLD_PHASE_RAD_PER_A = 5.0e-3
GOLD_ABSORPTION_LENGTH_A = 120.0  # transmission exp(-t / 120 Å): 0.43 through a 10 nm bead
BILAYER_NM = 4.0  # head group to head group
HEAD_GROUP_NM = 1.0  # each leaflet's dense head-group layer


@dataclass(frozen=True)
class Specimen:
    """Objects in the specimen frame, all lengths in pixels of the tilt images."""

    bead_xyz_px: torch.Tensor  # (n, 3) gold bead centres
    bead_radius_px: float
    vesicle_xyz_px: torch.Tensor  # (m, 3) vesicle centres
    vesicle_radius_px: torch.Tensor  # (m,) outer radius of the bilayer
    blob_xyz_px: torch.Tensor  # (b, 3) protein-like Gaussian blobs
    blob_sigma_px: torch.Tensor  # (b,) Gaussian sigma (FWHM = 2.355 sigma)
    ice_thickness_px: float
    pixel_size_a: float


def specimen_to_dict(s: Specimen) -> dict:
    """JSON-ready dict of a specimen (lists of floats, pixels)."""
    return {
        "units": "px (specimen frame of tiltflow.core.geometry)",
        "pixel_size_a": s.pixel_size_a,
        "ice_thickness_px": s.ice_thickness_px,
        "bead_radius_px": s.bead_radius_px,
        "bead_xyz_px": s.bead_xyz_px.tolist(),
        "vesicle_xyz_px": s.vesicle_xyz_px.tolist(),
        "vesicle_radius_px": s.vesicle_radius_px.tolist(),
        "vesicle_bilayer_nm": BILAYER_NM,
        "blob_xyz_px": s.blob_xyz_px.tolist(),
        "blob_sigma_px": s.blob_sigma_px.tolist(),
    }


def specimen_from_dict(d: dict) -> Specimen:
    """Inverse of ``specimen_to_dict``."""

    def t(key: str, cols: int | None) -> torch.Tensor:
        x = torch.tensor(d[key], dtype=torch.float64)
        return x.reshape(-1, cols) if cols else x.reshape(-1)

    return Specimen(
        bead_xyz_px=t("bead_xyz_px", 3),
        bead_radius_px=float(d["bead_radius_px"]),
        vesicle_xyz_px=t("vesicle_xyz_px", 3),
        vesicle_radius_px=t("vesicle_radius_px", None),
        blob_xyz_px=t("blob_xyz_px", 3),
        blob_sigma_px=t("blob_sigma_px", None),
        ice_thickness_px=float(d["ice_thickness_px"]),
        pixel_size_a=float(d["pixel_size_a"]),
    )


@dataclass(frozen=True)
class SpecimenContents:
    """What a random specimen holds, counted per image area: gold beads, vesicles and blobs
    (diameters drawn uniformly from the ranges)."""

    bead_diameter_nm: float
    n_beads: int
    n_vesicles: int
    n_blobs: int
    vesicle_diameter_nm: tuple[float, float] = (30.0, 100.0)
    blob_diameter_nm: tuple[float, float] = (3.0, 8.0)


def make_specimen(
    rng: np.random.Generator,
    contents: SpecimenContents,
    *,
    image_shape: tuple[int, int],  # (ny, nx)
    pixel_size_a: float,
    ice_thickness_nm: float,
    max_tilt_deg: float,
) -> Specimen:
    """Random specimen; counts are per image area and the region seen up to ``max_tilt_deg`` is
    filled at the same density. Beads: 40 % on the top ice surface, 40 % on the bottom, 20 % inside,
    at least 2.5 diameters apart in the 0° projection and outside vesicles."""
    ny, nx = image_shape
    nm = 10.0 / pixel_size_a  # px per nm
    thick = ice_thickness_nm * nm
    theta = math.radians(min(abs(max_tilt_deg) + 3.0, 75.0))
    half_y = 0.5 * math.hypot(nx, ny) + 24.0  # image diagonal plus stage-shift allowance
    half_x = (half_y + 0.5 * thick * math.sin(theta)) / math.cos(theta)
    density_scale = 4.0 * half_x * half_y / (nx * ny)

    def uniform_xy(n: int) -> np.ndarray:
        return np.stack([rng.uniform(-half_x, half_x, n), rng.uniform(-half_y, half_y, n)], -1)

    # vesicles: non-overlapping, inside the slab
    ves: list[np.ndarray] = []
    ves_r: list[float] = []
    for _ in range(round(contents.n_vesicles * density_scale)):
        for _try in range(50):
            r = min(rng.uniform(*contents.vesicle_diameter_nm) * nm / 2, thick / 2 - 2 * nm)
            zmax = max(thick / 2 - r - 2 * nm, 0.0)
            c = np.array([*uniform_xy(1)[0], rng.uniform(-zmax, zmax)])
            if all(np.linalg.norm(c - v) > r + rv + 2 * nm for v, rv in zip(ves, ves_r, strict=False)):
                ves.append(c)
                ves_r.append(r)
                break

    rb = contents.bead_diameter_nm * nm / 2
    beads: list[np.ndarray] = []
    for _ in range(round(contents.n_beads * density_scale)):
        for _try in range(200):
            u = rng.uniform()
            zs = thick / 2 - rb
            z = zs if u < 0.4 else (-zs if u < 0.8 else rng.uniform(-zs, zs))
            c = np.array([*uniform_xy(1)[0], z])
            far_2d = all(np.linalg.norm(c[:2] - b[:2]) > 5 * rb for b in beads)
            outside = all(np.linalg.norm(c - v) > rv + rb + nm for v, rv in zip(ves, ves_r, strict=False))
            if far_2d and outside:
                beads.append(c)
                break

    nb = round(contents.n_blobs * density_scale)
    sigma = rng.uniform(*contents.blob_diameter_nm, nb) * nm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    zlim = np.maximum(thick / 2 - 2 * sigma, 0.0)
    blobs = np.concatenate([uniform_xy(nb), (rng.uniform(-1, 1, nb) * zlim)[:, None]], -1)

    def as_t(a: list | np.ndarray, cols: int | None) -> torch.Tensor:
        x = torch.tensor(np.asarray(a, dtype=np.float64))
        return x.reshape(-1, cols) if cols else x.reshape(-1)

    return Specimen(
        bead_xyz_px=as_t(beads, 3),
        bead_radius_px=float(rb),
        vesicle_xyz_px=as_t(ves, 3),
        vesicle_radius_px=as_t(ves_r, None),
        blob_xyz_px=as_t(blobs, 3),
        blob_sigma_px=as_t(sigma, None),
        ice_thickness_px=float(thick),
        pixel_size_a=float(pixel_size_a),
    )


def _add_spheres(
    canvas: np.ndarray,
    centres: np.ndarray,
    shells: list[tuple[float, float]],
    radii: np.ndarray,
    supersample: int = 2,
) -> None:
    """Add projected thickness (px) of spheres/shells at ``centres`` (n, 2) canvas (x, y).

    ``shells`` lists depths (a, b) below each outer radius ``radii[i]``: a shell spans radius
    ``radii[i] - a`` (outer) to ``radii[i] - b`` (inner); (0, inf) is a solid sphere. Each pixel
    averages ``supersample``² sub-samples (the detector integrates over the pixel).
    """
    h, w = canvas.shape
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    for (cx, cy), r in zip(centres, radii, strict=False):
        x0, x1 = max(math.floor(cx - r) - 1, 0), min(math.ceil(cx + r) + 2, w)
        y0, y1 = max(math.floor(cy - r) - 1, 0), min(math.ceil(cy + r) + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        xs = (np.arange(x0, x1)[:, None] + sub).ravel() - cx
        ys = (np.arange(y0, y1)[:, None] + sub).ravel() - cy
        r2 = ys[:, None] ** 2 + xs[None, :] ** 2
        t = np.zeros_like(r2)
        for a, b in shells:
            ro, ri = r - a, r - b
            t += 2.0 * np.sqrt(np.clip(ro * ro - r2, 0.0, None))
            if ri > 0:
                t -= 2.0 * np.sqrt(np.clip(ri * ri - r2, 0.0, None))
        t = t.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
        canvas[y0:y1, x0:x1] += t


def _add_blobs(canvas: np.ndarray, centres: np.ndarray, sigmas: np.ndarray) -> None:
    """Add projected 3-D Gaussians (unit peak density): peak ``sigma sqrt(2 pi)`` px."""
    h, w = canvas.shape
    for (cx, cy), s in zip(centres, sigmas, strict=False):
        x0, x1 = max(math.floor(cx - 4 * s), 0), min(math.ceil(cx + 4 * s) + 1, w)
        y0, y1 = max(math.floor(cy - 4 * s), 0), min(math.ceil(cy + 4 * s) + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx) / s) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy) / s) ** 2)
        canvas[y0:y1, x0:x1] += s * math.sqrt(2 * math.pi) * gy[:, None] * gx[None, :]


@dataclass(frozen=True)
class Projection:
    """One view of the specimen on a canvas of raw-image pixels (canvas = image + margin)."""

    phase_rad: torch.Tensor  # (ny + 2m, nx + 2m) phase of protein, lipid and gold
    gold_thickness_a: torch.Tensor  # (ny + 2m, nx + 2m) projected gold thickness, Å
    bead_xy_px: torch.Tensor  # (n, 2) bead centres in raw image pixels (no margin)


def project_specimen(
    specimen: Specimen,
    *,
    tilt_angle_deg: float,  # true tilt angle
    tilt_axis_deg: float,
    shift_px: tuple[float, float],  # stage shift of the view (x, y), px
    image_shape: tuple[int, int],  # (ny, nx)
    margin_px: int = 0,
) -> Projection:
    """Analytic projection of every object at its ``geometry.project_points`` centre.

    Canvas pixel ``[y + m, x + m]`` is raw image pixel (x, y); pixel centres sit at integers.
    """
    ny, nx = image_shape
    m = margin_px
    canvas_shape = (ny + 2 * m, nx + 2 * m)
    shift = torch.tensor([shift_px], dtype=torch.float64)
    angles = torch.tensor([tilt_angle_deg], dtype=torch.float64)

    def centres(xyz: torch.Tensor) -> np.ndarray:
        if xyz.shape[0] == 0:
            return np.zeros((0, 2))
        p = geometry.project_points(
            xyz,
            tilt_angles_deg=angles,
            tilt_axis_deg=tilt_axis_deg,
            shifts_px=shift,
            image_shape=image_shape,
        )[0]
        return p.numpy()

    px = specimen.pixel_size_a
    soft = np.zeros(canvas_shape, np.float32)
    bead_xy = centres(specimen.bead_xyz_px)
    nm = 10.0 / px
    leaflets = [(0.0, HEAD_GROUP_NM * nm), ((BILAYER_NM - HEAD_GROUP_NM) * nm, BILAYER_NM * nm)]
    _add_spheres(soft, centres(specimen.vesicle_xyz_px) + m, leaflets, specimen.vesicle_radius_px.numpy())
    _add_blobs(soft, centres(specimen.blob_xyz_px) + m, specimen.blob_sigma_px.numpy())
    gold = np.zeros(canvas_shape, np.float32)
    radii = np.full(len(bead_xy), specimen.bead_radius_px)
    _add_spheres(gold, bead_xy + m, [(0.0, math.inf)], radii, supersample=4)
    # px * Å/px * rad/Å = rad
    phase = (soft * PROTEIN_PHASE_RAD_PER_A + gold * GOLD_PHASE_RAD_PER_A) * px
    return Projection(
        phase_rad=torch.from_numpy(phase),
        gold_thickness_a=torch.from_numpy(gold * px),
        bead_xy_px=torch.from_numpy(bead_xy),
    )
