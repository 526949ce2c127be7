"""Known-answer tests for the reconstruction core (projector pair, WBP, SIRT, .xf alignment, binning).

Ground truth: Gaussian blobs at known 3-D positions; their volume and their tilt-series projections are
both computed analytically (a blob of sigma s and amplitude a projects to a 2-D Gaussian of amplitude
``a * s * sqrt(2 pi)`` at ``geometry.tilt_points``), so reconstructions are not tested against the
projector that made their input.
"""

import itertools
import math

import pytest
import torch

from tiltflow.core import geometry
from tiltflow.core.radial_filter import FAKE_SIRT_ALPHA, fake_sirt_exponent, padded_length
from tiltflow.core.reconstruct import (
    apply_xf,
    backproject,
    bin_views,
    project_volume,
    radial_filter,
    sirt,
    wbp,
)

NZ, NY, NX = 40, 40, 80
ANGLES = torch.linspace(-60.0, 60.0, 41)
# x, y, z (px, specimen frame), sigma (px), amplitude
BLOBS = torch.tensor(
    [
        [-20.0, -8.0, 8.0, 2.5, 1.0],
        [15.0, 10.0, -10.0, 2.0, 1.5],
        [0.0, 0.0, 0.0, 3.0, 0.8],
        [30.0, -12.0, -5.0, 2.0, 1.2],
    ],
    dtype=torch.float64,
)


def _axis(n):
    return torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0


def blob_volume(nz=NZ, ny=NY, nx=NX):
    z, y, x = torch.meshgrid(_axis(nz), _axis(ny), _axis(nx), indexing="ij")
    vol = torch.zeros_like(x)
    for bx, by, bz, s, a in BLOBS.tolist():
        vol += a * torch.exp(-((x - bx) ** 2 + (y - by) ** 2 + (z - bz) ** 2) / (2 * s * s))
    return vol.float()


def gaussian_image(centres_xy, sigma, amps, shape):
    """Sum of 2-D Gaussians at 0-based pixel positions ``(n, 2)`` (x, y) -> ``(h, w)``."""
    h, w = shape
    yy = torch.arange(h, dtype=torch.float64)[:, None]
    xx = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.zeros(h, w, dtype=torch.float64)
    for (cx, cy), s, a in zip(centres_xy.tolist(), sigma, amps, strict=False):
        img += a * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return img


def blob_projections(angles, *, tilt_axis_deg=0.0, shifts_px=None, shape=(NY, NX), blobs=BLOBS):
    """Analytic projections of ``blobs`` into raw views ``(t, h, w)`` via geometry.project_points."""
    raw = geometry.project_points(
        blobs[:, :3],
        tilt_angles_deg=torch.as_tensor(angles),
        tilt_axis_deg=tilt_axis_deg,
        shifts_px=shifts_px,
        image_shape=shape,
    )
    sig = blobs[:, 3].tolist()
    amps = (blobs[:, 4] * blobs[:, 3] * math.sqrt(2 * math.pi)).tolist()
    return torch.stack([gaussian_image(raw[i], sig, amps, shape) for i in range(len(angles))]).float()


def pearson(a, b):
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def wedge_band_correlation(a, b, *, max_tilt_deg=60.0, k_max=0.25):
    """Correlation over the Fourier components a ±max_tilt series measures: |kz| <= tan(max) |kx|, 0 < |k| < k_max."""
    fa, fb = torch.fft.fftn(a.double()), torch.fft.fftn(b.double())
    nz, ny, nx = a.shape
    kz = torch.fft.fftfreq(nz)[:, None, None]
    ky = torch.fft.fftfreq(ny)[None, :, None]
    kx = torch.fft.fftfreq(nx)[None, None, :]
    k = torch.sqrt(kx**2 + ky**2 + kz**2)
    m = (kz.abs() <= math.tan(math.radians(max_tilt_deg)) * kx.abs() + 1e-9) & (k > 0) & (k < k_max)
    num = (fa[m] * fb[m].conj()).real.sum()
    return float(num / torch.sqrt((fa[m].abs() ** 2).sum() * (fb[m].abs() ** 2).sum()))


def subvoxel_peak(vol, near_zyx, radius=3):
    """Specimen (z, y, x) of the local maximum near a voxel, refined by a parabola along each axis."""
    dims = vol.shape
    idx = [round(c + (n - 1) / 2.0) for c, n in zip(near_zyx, dims, strict=False)]
    lo = [max(i - radius, 0) for i in idx]
    sub = vol[lo[0] : idx[0] + radius + 1, lo[1] : idx[1] + radius + 1, lo[2] : idx[2] + radius + 1]
    p = [int(q) + o for q, o in zip(torch.nonzero(sub == sub.max())[0], lo, strict=False)]
    out = []
    for ax in range(3):
        m, c, pl = (list(p) for _ in range(3))
        m[ax] -= 1
        pl[ax] += 1
        fm, fc, fp = float(vol[tuple(m)]), float(vol[tuple(c)]), float(vol[tuple(pl)])
        out.append(p[ax] + 0.5 * (fm - fp) / (fm - 2 * fc + fp) - (dims[ax] - 1) / 2.0)
    return out


def centroid(img, centre_xy, radius=6):
    """Intensity centroid (x, y) of ``img`` in a square window around a 0-based position."""
    cx, cy = (round(c) for c in centre_xy)
    win = img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1].double()
    win = win - win.min()
    yy, xx = torch.meshgrid(
        torch.arange(cy - radius, cy + radius + 1), torch.arange(cx - radius, cx + radius + 1), indexing="ij"
    )
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


@pytest.fixture(scope="module")
def blob_series():
    return blob_projections(ANGLES)


@pytest.fixture(scope="module")
def wbp_volume(blob_series):
    return wbp(blob_series, ANGLES, thickness_px=NZ)


@pytest.fixture(scope="module")
def sirt20_volume(blob_series):
    return sirt(blob_series, ANGLES, thickness_px=NZ, iterations=20)


# --- projector pair --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zyx, offsets", [((15, 5, 30), (0.0, 0.0)), ((3, 10, 70), (4.5, -7.25)), ((35, 0, 11), (-2.0, 3.0))]
)
def test_project_volume_puts_a_voxel_where_geometry_projects_it(zyx, offsets):
    z_off, x_off = offsets
    iz, iy, ix = zyx
    vol = torch.zeros(NZ, 16, NX)  # 16 rows
    vol[iz, iy, ix] = 1.0
    views = project_volume(vol, ANGLES, z_offset_px=z_off, x_offset_px=x_off)
    point = torch.tensor([[ix - (NX - 1) / 2 + x_off, iy - 7.5, iz - (NZ - 1) / 2 + z_off]], dtype=torch.float64)
    expected = geometry.project_points(
        point, tilt_angles_deg=ANGLES, tilt_axis_deg=0.0, shifts_px=None, image_shape=(16, NX)
    )
    row = views[:, iy, :].double()
    cols = torch.arange(NX, dtype=torch.float64)
    found_x = (row * cols).sum(-1) / row.sum(-1)
    assert torch.allclose(row.sum(-1), torch.ones(len(ANGLES), dtype=torch.float64), atol=1e-5)  # mass kept
    assert (found_x - expected[:, 0, 0]).abs().max() < 0.5  # measured: 1e-7 px
    assert views[:, [r for r in range(16) if r != iy], :].abs().max() == 0


def test_project_and_backproject_are_adjoint():
    gen = torch.Generator().manual_seed(1)
    vol = torch.randn(2, 24, 12, 50, generator=gen)  # a leading batch dimension
    views = torch.randn(2, 41, 12, 56, generator=gen)
    kw = {"z_offset_px": 1.3, "x_offset_px": -2.2}
    lhs = (project_volume(vol, ANGLES, nx_view=56, **kw) * views).sum()
    rhs = (vol * backproject(views, ANGLES, thickness_px=24, nx=50, **kw)).sum()
    assert abs(float(lhs - rhs)) / abs(float(lhs)) < 1e-3  # measured ~3e-7


def test_project_volume_matches_analytic_projections(blob_series):
    views = project_volume(blob_volume(), ANGLES)
    assert float((views - blob_series).norm() / blob_series.norm()) < 0.04  # measured 0.023


# --- WBP -------------------------------------------------------------------------------------------


def test_wbp_peaks_at_the_blob_positions(wbp_volume):
    for bx, by, bz, _, _ in BLOBS.tolist():
        z, y, x = subvoxel_peak(wbp_volume, (bz, by, bx))
        assert abs(z - bz) < 1.0 and abs(y - by) < 1.0 and abs(x - bx) < 1.0, (z, y, x, bz, by, bx)


def test_wbp_correlates_with_phantom_inside_the_measured_wedge(wbp_volume):
    vol = blob_volume()
    assert wedge_band_correlation(wbp_volume, vol) > 0.98  # measured 0.995
    assert pearson(wbp_volume, vol) > 0.80  # whole volume, missing wedge included: measured 0.845


def test_wbp_with_full_coverage_reproduces_the_density_scale():
    angles = torch.arange(60) * 3.0 - 90.0
    rec = wbp(blob_projections(angles), angles, thickness_px=NZ, radial_cutoff=0.5)
    vol = blob_volume()
    assert float((rec - vol).norm() / vol.norm()) < 0.05  # measured 0.024
    assert abs(float(rec.max() / vol.max()) - 1.0) < 0.06  # measured 0.966


def test_wbp_finds_blobs_from_raw_views_aligned_with_xf():
    tilt_axis, shape_raw = 84.6, (112, 112)
    gen = torch.Generator().manual_seed(3)
    shifts = (torch.rand(len(ANGLES), 2, generator=gen, dtype=torch.float64) - 0.5) * 10.0
    raw = blob_projections(ANGLES, tilt_axis_deg=tilt_axis, shifts_px=shifts, shape=shape_raw)
    aligned = apply_xf(raw, geometry.xf_from_geometry(tilt_axis, shifts), out_shape=(NY, NX))
    rec = wbp(aligned, ANGLES, thickness_px=NZ)
    for bx, by, bz, _, _ in BLOBS.tolist():
        z, y, x = subvoxel_peak(rec, (bz, by, bx))
        assert max(abs(z - bz), abs(y - by), abs(x - bx)) < 1.0


def test_radial_filter_is_a_ramp_with_gaussian_falloff():
    n = 400
    w = radial_filter(n, cutoff=0.3, falloff=0.05).double()
    k = torch.arange(n // 2 + 1, dtype=torch.float64) / n
    assert w.shape == (n // 2 + 1,)
    assert torch.allclose(w[1:121], k[1:121], rtol=1e-6)  # ramp up to 0.3 cycles/px
    assert abs(float(w[0]) - 0.2 / n) < 1e-9  # Kak & Slaney's value at 0
    assert abs(float(w[140] / w[120]) - math.exp(-0.5 * (0.05 / 0.05) ** 2)) < 1e-5  # one sigma out
    assert torch.allclose(radial_filter(n, n_views=41), radial_filter(n) * math.pi / 41)


def test_fake_sirt_filter_keeps_low_frequencies_and_flattens_high_ones():
    n = 1024
    k = torch.arange(n // 2 + 1, dtype=torch.float64) / n
    ramp = radial_filter(n, cutoff=0.5).double()
    prev = None
    for iters in (5, 10, 20, 40):
        ratio = (radial_filter(n, cutoff=0.5, sirt_like_iterations=iters).double() / ramp)[1:]
        kk = k[1:]
        assert torch.all(ratio <= 1.0 + 1e-6) and torch.all(ratio > 0)
        assert torch.all(ratio[kk <= 2 * FAKE_SIRT_ALPHA] > 0.99)  # low frequencies untouched
        assert torch.all(ratio[1:] <= ratio[:-1] + 1e-6)  # attenuation grows with k
        plateau = fake_sirt_exponent(iters) * FAKE_SIRT_ALPHA  # weight -> N alpha at high k
        hi = kk > 20 * plateau
        assert torch.allclose(ratio[hi] * kk[hi], torch.full_like(kk[hi], plateau), rtol=0.05)
        if prev is not None:
            assert torch.all(ratio >= prev - 1e-6)  # more iterations, closer to WBP
        prev = ratio


def test_fake_sirt_reconstruction_moves_power_to_low_frequencies(blob_series, wbp_volume):
    def low_fraction(v):
        p = torch.fft.fftn(v.double() - v.double().mean()).abs() ** 2
        kz, ky, kx = torch.meshgrid(*(torch.fft.fftfreq(s) for s in v.shape), indexing="ij")
        return float(p[torch.sqrt(kx**2 + ky**2 + kz**2) < 0.05].sum() / p.sum())

    fake = wbp(blob_series, ANGLES, thickness_px=NZ, fake_sirt_iterations=10)
    assert low_fraction(fake) > low_fraction(wbp_volume) + 0.05  # measured 0.38 vs 0.20


# --- SIRT ------------------------------------------------------------------------------------------


def test_sirt_residual_decreases_monotonically(blob_series):
    x, residuals = None, []
    for _ in range(4):
        x = sirt(blob_series, ANGLES, thickness_px=NZ, iterations=1, initial=x)
        residuals.append(float((project_volume(x, ANGLES) - blob_series).norm() / blob_series.norm()))
    assert all(b < a for a, b in itertools.pairwise(residuals)), residuals
    assert residuals[-1] < 0.42  # measured 0.36 after 4 iterations (0.65 after 1)


def test_sirt_correlates_better_than_wbp(blob_series, wbp_volume, sirt20_volume):
    vol = blob_volume()
    fake20 = wbp(blob_series, ANGLES, thickness_px=NZ, fake_sirt_iterations=20)
    assert pearson(sirt20_volume, vol) > pearson(wbp_volume, vol) + 0.01  # measured 0.869 vs 0.845
    assert pearson(sirt20_volume, vol) > pearson(fake20, vol) + 0.03  # measured 0.869 vs 0.802


def test_sirt_positivity_clamps_and_helps(blob_series, sirt20_volume):
    vol = blob_volume()
    free = sirt20_volume
    positive = sirt(blob_series, ANGLES, thickness_px=NZ, iterations=20, positivity=True)
    assert float(free.min()) < -0.05 and float(positive.min()) >= 0.0
    assert pearson(positive, vol) > pearson(free, vol) + 0.03  # measured 0.947 vs 0.869


def test_sirt_by_blocks_of_rows_equals_the_whole_volume(blob_series, monkeypatch):
    """Rows are independent: CPU SIRT runs its iterations on blocks of rows (a ragged last block
    here); the volume and the positivity clamp are those of the whole-volume iteration."""
    from tiltflow.core import sirt_solver as sirt_module

    whole = sirt(blob_series, ANGLES, thickness_px=NZ, iterations=5, positivity=True)
    ny, nx = blob_series.shape[-2:]
    monkeypatch.setattr(sirt_module, "_CPU_BLOCK_VOXELS", NZ * nx * 3)  # 3 rows per block
    assert ny % 3 != 0
    blocks = sirt(blob_series, ANGLES, thickness_px=NZ, iterations=5, positivity=True)
    assert torch.allclose(blocks, whole, rtol=1e-5, atol=1e-6 * float(whole.abs().max()))


# --- .xf alignment and binning ---------------------------------------------------------------------


@pytest.mark.parametrize("out_shape", [None, (100, 140)])
def test_apply_xf_maps_raw_projections_to_aligned_positions(out_shape):
    tilt_axis, shape = -96.3, (128, 112)
    angles = torch.tensor([-50.0, -20.0, 0.0, 30.0, 55.0])
    shifts = torch.tensor([[3.2, -5.7], [-6.1, 2.4], [0.0, 0.0], [4.4, 4.9], [-2.3, -6.6]], dtype=torch.float64)
    # points whose projections stay > 20 px apart, so window centroids are unbiased
    points = torch.tensor(
        [
            [-30.0, -35.0, 5.0, 2.0, 1.0],
            [25.0, -5.0, -8.0, 2.0, 1.0],
            [-5.0, 25.0, 10.0, 2.0, 1.0],
            [35.0, 40.0, 0.0, 2.0, 1.0],
        ],
        dtype=torch.float64,
    )
    raw = blob_projections(angles, tilt_axis_deg=tilt_axis, shifts_px=shifts, shape=shape, blobs=points)
    xf = geometry.xf_from_geometry(tilt_axis, shifts)
    oh, ow = shape if out_shape is None else out_shape
    for mode in ("bicubic", "bilinear"):
        aligned = apply_xf(raw, xf, out_shape, mode=mode)
        assert aligned.shape == (5, oh, ow)
        expected = geometry.tilt_points(points[:, :3], angles)[..., :2] + torch.tensor(
            [(ow - 1) / 2, (oh - 1) / 2], dtype=torch.float64
        )
        for i in range(5):
            for j in range(len(points)):
                cx, cy = centroid(aligned[i], expected[i, j].tolist())
                assert abs(cx - expected[i, j, 0]) < 0.3 and abs(cy - expected[i, j, 1]) < 0.3  # measured < 0.05


def test_apply_xf_fills_outside_with_the_mean_and_rejects_bad_xf():
    img = torch.rand(1, 32, 32) + 5.0
    xf = torch.tensor([[1.0, 0.0, 0.0, 1.0, 100.0, 0.0]])
    out = apply_xf(img, xf)
    assert torch.allclose(out, img.mean().expand_as(out), atol=1e-5)
    with pytest.raises(ValueError, match="xf must have shape"):
        apply_xf(img, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="singular"):
        apply_xf(img, torch.zeros(1, 6))


@pytest.mark.parametrize("factor", [2, 3])
def test_bin_views_keeps_imod_centres(factor):
    h, w = 131, 200
    pos = torch.tensor([[40.3, 30.7], [150.0, 100.2], [99.5, 65.0], [170.8, 28.1]], dtype=torch.float64)
    img = gaussian_image(pos, [5.0] * 4, [1.0] * 4, (h, w)).float()
    binned = bin_views(torch.stack([img, 2 * img]), factor)
    hb, wb = h // factor, w // factor
    assert binned.shape == (2, hb, wb)
    assert torch.allclose(binned[1], 2 * binned[0], atol=1e-5)
    for x, y in pos.tolist():
        ex = (x - (w - 1) / 2) / factor + (wb - 1) / 2
        ey = (y - (h - 1) / 2) / factor + (hb - 1) / 2
        cx, cy = centroid(binned[0], (ex, ey), radius=7)
        assert abs(cx - ex) < 0.1 and abs(cy - ey) < 0.1, (cx, cy, ex, ey)  # measured < 0.02


def test_bad_inputs_raise_clear_errors(blob_series):
    with pytest.raises(ValueError, match="one angle per view"):
        wbp(blob_series, ANGLES[:-1], thickness_px=NZ)
    with pytest.raises(ValueError, match="thickness_px"):
        backproject(blob_series, ANGLES, thickness_px=0)
    with pytest.raises(ValueError, match="relaxation"):
        sirt(blob_series, ANGLES, thickness_px=NZ, relaxation=2.5)
    with pytest.raises(ValueError, match="cutoff"):
        radial_filter(64, cutoff=0.8)
    with pytest.raises(ValueError, match="factor"):
        bin_views(blob_series, 0)
    assert padded_length(97) == 200 and padded_length(360) == 720


# --- strip-based CTF phase flipping -----------------------------------------------------------------

CTF_KW = {"pixel_size_a": 2.0, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07}


@pytest.fixture(scope="module")
def tilted_ctf_image():
    """A 60° view of band-limited noise whose CTF follows the defocus gradient (in 8-px column blocks)."""
    from tiltflow.core.ctf_model import Optics, ctf_2d
    from tiltflow.core.fourier import frequency_grid_2d

    n, df0, tilt = 512, 15000.0, 60.0
    ky, kx = frequency_grid_2d((n, n))
    noise = torch.randn(n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    specimen = torch.fft.irfft2(torch.fft.rfft2(noise) * torch.exp(-(kx**2 + ky**2) / (2 * 0.25**2)), s=(n, n))
    spectrum = torch.fft.rfft2(specimen)
    # df = df0 + x' tan(theta) * pixel size at the centre of each 8-px column block (geometry docstring)
    block = 8
    x_centre = torch.arange(0, n, block, dtype=torch.float64) + (block - 1) / 2 - (n - 1) / 2
    dfs = df0 + x_centre * math.tan(math.radians(tilt)) * CTF_KW["pixel_size_a"]
    image = torch.empty_like(specimen)
    for b0 in range(0, len(dfs), 16):
        d = dfs[b0 : b0 + 16]
        ctf = ctf_2d((n, n), Optics(**CTF_KW), defocus_u_a=d, defocus_v_a=d, astigmatism_angle_deg=torch.zeros_like(d))
        modulated = torch.fft.irfft2(spectrum * ctf.double(), s=(n, n))
        for j in range(len(d)):
            x0 = (b0 + j) * block
            image[:, x0 : x0 + block] = modulated[j, :, x0 : x0 + block]
    return image.float(), -specimen, df0, tilt  # -specimen: the ideal image (dark protein, like low k)


def shell_correlation(a, b, k_lo, k_hi):
    fa, fb = torch.fft.rfft2(a.double()), torch.fft.rfft2(b.double())
    ky = torch.fft.fftfreq(a.shape[-2])[:, None]
    kx = torch.fft.rfftfreq(a.shape[-1])[None, :]
    k = torch.sqrt(kx**2 + ky**2)
    m = (k >= k_lo) & (k < k_hi)
    return float((fa[m] * fb[m].conj()).real.sum() / torch.sqrt((fa[m].abs() ** 2).sum() * (fb[m].abs() ** 2).sum()))


def test_ctf_phase_flip_strips_restores_contrast_in_every_band(tilted_ctf_image):
    from tiltflow.core.ctf_model import Optics
    from tiltflow.core.reconstruct import ctf_phase_flip_strips

    image, ideal, df0, tilt = tilted_ctf_image

    def flip(angle, width):
        return ctf_phase_flip_strips(image[None], [angle], Optics(**CTF_KW), defocus_u_a=[df0], strip_width_px=width)[0]

    strips, whole, wrong_way = flip(tilt, 32), flip(tilt, 512), flip(-tilt, 32)
    assert pearson(image, ideal) < 0.2  # CTF-modulated: measured 0.10
    assert pearson(strips, ideal) > 0.8  # measured 0.857 (one defocus for the whole view: 0.755)
    for k_lo in (0.0, 0.1, 0.2, 0.3, 0.4):
        assert shell_correlation(strips, ideal, k_lo, k_lo + 0.05) > 0.7  # measured >= 0.77
    high = (0.3, 0.45)  # where the defocus gradient matters
    assert (
        shell_correlation(strips, ideal, *high) > shell_correlation(whole, ideal, *high) + 0.05
    )  # measured 0.79 vs 0.48
    assert shell_correlation(wrong_way, ideal, *high) < 0.3  # reversed gradient: measured -0.01


# --- CTF in the aligned frame, strip widths, dose weighting, cached operators ----------------------------


def test_defocus_in_aligned_views_follows_the_xf_and_the_geometry():
    from tiltflow.core.phase_flip import defocus_in_aligned_views

    axis, shape, px = 85.0, (200, 300), 2.0
    angles = torch.tensor([-50.0, 0.0, 40.0], dtype=torch.float64)
    shifts = torch.tensor([[12.0, -7.0], [0.0, 0.0], [-20.0, 5.0]], dtype=torch.float64)
    xf = geometry.xf_from_geometry(axis, shifts)
    out = defocus_in_aligned_views(
        xf,
        angles,
        defocus_u_a=[20000.0] * 3,
        defocus_v_a=[19000.0] * 3,
        astigmatism_angle_deg=[30.0] * 3,
        pixel_size_a=px,
        image_shape=shape,
    )
    # the aligned centre shows the raw point c + s (geometry: p_raw = c + R(axis) p_aligned + s); its
    # mid-plane defocus is the raw centre's plus x' tan(theta) px, x' = (R(-axis) s)_x
    s_aligned = shifts @ geometry.rotation_matrix_2d(-axis).T
    expected = 20000.0 + s_aligned[:, 0] * torch.tan(torch.deg2rad(angles)) * px
    assert torch.allclose(out.defocus_u_a, expected, atol=1e-6)
    assert torch.allclose(out.defocus_u_a - out.defocus_v_a, torch.full((3,), 1000.0, dtype=torch.float64))
    assert torch.allclose(out.astigmatism_angle_deg, torch.full((3,), (30.0 - axis) % 180.0, dtype=torch.float64))
    assert out.defocus_u_a[1] == pytest.approx(20000.0)  # no gradient at 0°


def test_strip_width_keeps_the_defocus_change_within_tolerance():
    from tiltflow.core.phase_flip import strip_width_for_tolerance

    widths = strip_width_for_tolerance([0.0, 30.0, 60.0], pixel_size_a=2.0, width_px=1000, defocus_tol_a=500.0)
    assert widths[0] == 1000  # flat view: one strip
    for w, a in zip(widths[1:], (30.0, 60.0), strict=False):
        assert w * math.tan(math.radians(a)) * 2.0 <= 500.0 < (w + 1) * math.tan(math.radians(a)) * 2.0
    auto = strip_width_for_tolerance([60.0], pixel_size_a=2.0, width_px=1000)[0]
    lam = 0.019687  # Å at 300 kV
    tol = auto * math.tan(math.radians(60.0)) * 2.0  # Å of defocus across one strip
    assert math.pi * lam * tol * (0.25 / 2.0) ** 2 <= math.pi / 4 + 1e-3  # phase change at Nyquist <= pi/4


def test_dose_weighting_is_the_simulators_damage_filter_per_view():
    """Each view filtered by exp(-N / 2 Ne(k)) at its own exposure: against the simulator's own
    damage filter (testing.imaging) and one value by hand; the mean and positions are kept."""
    from tiltflow.core.dose import dose_weight_views, view_exposure_e_a2
    from tiltflow.testing.imaging import damage_filter_2d

    views = torch.randn(3, 96, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 5.0
    exposure = view_exposure_e_a2([0.0, 18.0, 78.0], [4.0, 4.0, 4.0])
    assert exposure.tolist() == [2.0, 20.0, 80.0]
    out = dose_weight_views(views, exposure, pixel_size_a=2.0, voltage_kv=300.0)
    ratio = torch.fft.rfft2(out) / torch.fft.rfft2(views)
    for i, n in enumerate(exposure.tolist()):
        sim = damage_filter_2d((96, 128), pixel_size_a=2.0, exposure_e_a2=n, voltage_kv=300.0).double()
        assert torch.allclose(ratio[i].real, sim, atol=2e-5) and ratio[i].imag.abs().max() < 1e-6
    # by hand: k = 0.25 cycles/px = 0.125 / Å, Ne = 0.245 * 0.125^-1.665 + 2.81 = 10.63 e/Å²
    assert ratio[1, 0, 32].real == pytest.approx(math.exp(-20.0 / (2 * 10.634)), rel=1e-3)
    assert torch.allclose(out.mean(dim=(-2, -1)), views.mean(dim=(-2, -1)))
    with pytest.raises(ValueError, match="one per view"):
        dose_weight_views(views, [1.0, 2.0], pixel_size_a=2.0, voltage_kv=300.0)


def test_cached_operators_give_the_same_projections_and_stay_bounded(blob_series):
    from tiltflow.core.backproject import OPERATOR_CACHE_SIZE

    vol = blob_volume()
    cache: dict = {}
    first = project_volume(vol, ANGLES, operators=cache)
    again = project_volume(vol, ANGLES, operators=cache)
    assert len(cache) == 1 and torch.equal(first, again)
    assert torch.allclose(first, project_volume(vol, ANGLES), atol=1e-5)
    bp = backproject(blob_series, ANGLES, thickness_px=NZ, operators=cache)
    assert len(cache) == 1  # same geometry: the same matrices
    assert torch.allclose(bp, backproject(blob_series, ANGLES, thickness_px=NZ), atol=1e-4)
    for offset in (1.0, 2.0, 3.0):
        project_volume(vol, ANGLES + offset, operators=cache)
    assert len(cache) == OPERATOR_CACHE_SIZE
