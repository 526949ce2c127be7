"""Known-answer tests for core/transforms.py: IMOD .xf, AreTomo .aln and RELION 5 conventions."""

import math
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from tiltflow.core.geometry import (
    image_centre,
    project_points,
    rotation_matrix_2d,
    tilt_points,
    xf_from_geometry,
)
from tiltflow.core.transforms import (
    RELION_ALIGNMENT_COLUMNS,
    aln_to_xf,
    geometry_to_xf,
    relion_rotation_matrices,
    relion_to_xf,
    xf_to_aln,
    xf_to_geometry,
    xf_to_relion,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus_root() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus"))
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


def _random_geometry(t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    axis = torch.rand(t, generator=g, dtype=torch.float64) * 360 - 180
    shifts = torch.randn(t, 2, generator=g, dtype=torch.float64) * 40
    tilts = torch.linspace(-60, 60, t, dtype=torch.float64)
    scale = torch.tensor([150.0, 150.0, 40.0], dtype=torch.float64)
    points = torch.randn(20, 3, generator=g, dtype=torch.float64) * scale
    return axis, shifts, tilts, points


def _apply_xf(xf: torch.Tensor, raw_xy: torch.Tensor, in_shape, out_shape) -> torch.Tensor:
    """DESIGN.md: X' = A (X - c_in) + D + c_out for every view; raw_xy (t, n, 2)."""
    a = xf[:, :4].reshape(-1, 2, 2)
    c_in = torch.tensor(image_centre(in_shape), dtype=torch.float64)
    c_out = torch.tensor(image_centre(out_shape), dtype=torch.float64)
    return (raw_xy - c_in) @ a.transpose(-1, -2) + xf[:, None, 4:6] + c_out


@pytest.mark.parametrize("magnification", [1.0, 0.97])
def test_xf_geometry_round_trip_is_exact(magnification):
    axis, shifts, _, _ = _random_geometry(9)
    xf = geometry_to_xf(axis, shifts, magnification)
    geo = xf_to_geometry(xf)
    wrapped = torch.remainder(geo.tilt_axis_deg - axis + 180, 360) - 180
    assert wrapped.abs().max() < 1e-10
    assert (geo.shifts_px - shifts).abs().max() < 1e-10
    assert (geo.magnification - magnification).abs().max() < 1e-12


def test_geometry_to_xf_agrees_with_geometry_module():
    _, shifts, _, _ = _random_geometry(5)
    assert torch.allclose(geometry_to_xf(37.5, shifts), xf_from_geometry(37.5, shifts), atol=1e-12)


@pytest.mark.parametrize("shape", [(256, 320), (255, 321)])
def test_xf_maps_projected_raw_points_to_aligned_positions(shape):
    # the .xf made from the geometry undoes rotation and shift: aligned = tilted (x', y') + centre
    axis, shifts, tilts, points = _random_geometry(7, seed=1)
    axis = torch.full((7,), 85.3, dtype=torch.float64)
    raw = project_points(points, tilt_angles_deg=tilts, tilt_axis_deg=85.3, shifts_px=shifts, image_shape=shape)
    aligned = _apply_xf(geometry_to_xf(axis, shifts), raw, shape, shape)
    centre = torch.tensor(image_centre(shape), dtype=torch.float64)
    expected = tilt_points(points, tilts)[..., :2] + centre
    assert (aligned - expected).abs().max() < 1e-9


def test_aretomo_convention_is_design_formula_and_tx_ty_is_the_raw_shift():
    axis, shifts, tilts, points = _random_geometry(6, seed=2)
    xf = aln_to_xf(axis, shifts)  # AreTomo's own -OutImod writer
    a = rotation_matrix_2d(-axis)
    d = (a @ (-shifts).unsqueeze(-1)).squeeze(-1)  # DESIGN.md: (DX, DY) = A (-TX, -TY)
    assert (xf - torch.cat([a.reshape(-1, 4), d], 1)).abs().max() < 1e-12
    # ... and it aligns views projected with ROT as tilt axis and (TX, TY) as raw shift
    shape = (300, 300)
    for i in range(6):
        raw = project_points(
            points,
            tilt_angles_deg=tilts[i : i + 1],
            tilt_axis_deg=float(axis[i]),
            shifts_px=shifts[i : i + 1],
            image_shape=shape,
        )
        aligned = _apply_xf(xf[i : i + 1], raw, shape, shape)
        expected = tilt_points(points, tilts[i : i + 1])[..., :2] + 149.5
        assert (aligned - expected).abs().max() < 1e-9


def test_alnfile_convention_transposes_rotation_and_both_invert():
    axis, shifts, _, _ = _random_geometry(4, seed=3)
    ours, theirs = aln_to_xf(axis, shifts), aln_to_xf(axis, shifts, convention="alnfile")
    assert (ours[:, [0, 2, 1, 3]] - theirs[:, :4]).abs().max() < 1e-12
    for conv, xf in (("aretomo", ours), ("alnfile", theirs)):
        back = xf_to_aln(xf, convention=conv)
        assert (torch.remainder(back.tilt_axis_deg - axis + 180, 360) - 180).abs().max() < 1e-10
        assert (back.shifts_px - shifts).abs().max() < 1e-10


def test_aln_to_xf_shift_scale_and_dark_views_get_identity():
    rot = torch.tensor([10.0, 20.0])
    tx_ty = torch.tensor([[4.0, -2.0], [1.0, 3.0]])
    binned = aln_to_xf(rot, tx_ty, shift_scale=0.5)  # .aln at bin 1, .xf for a bin-2 stack
    assert torch.allclose(binned[:, 4:], aln_to_xf(rot, tx_ty)[:, 4:] * 0.5)
    full = aln_to_xf(rot, tx_ty, raw_indices=torch.tensor([1, 3]), n_raw=5)
    identity = torch.tensor([1.0, 0, 0, 1, 0, 0], dtype=torch.float64)
    assert full.shape == (5, 6)
    assert all(torch.equal(full[i], identity) for i in (0, 2, 4))
    assert torch.equal(full[[1, 3]], aln_to_xf(rot, tx_ty))
    with pytest.raises(ValueError, match="raw_indices"):
        aln_to_xf(rot, tx_ty, raw_indices=torch.tensor([0, 9]), n_raw=5)


@pytest.mark.parametrize("shape", [(400, 512), (399, 511)])
def test_xf_to_relion_columns_project_like_our_geometry(shape):
    # RELION 5: p_img = Rz Ry Rx p + shift_A / pixel + N // 2 must equal project_points
    axis, shifts, tilts, points = _random_geometry(8, seed=4)
    axis = torch.full((8,), -84.2, dtype=torch.float64)
    pixel = 2.7
    cols = xf_to_relion(geometry_to_xf(axis, shifts), tilts, pixel_size_a=pixel, image_shape=shape)
    assert tuple(cols) == RELION_ALIGNMENT_COLUMNS
    rot = relion_rotation_matrices(cols["rlnTomoXTilt"], cols["rlnTomoYTilt"], cols["rlnTomoZRot"])
    shift = torch.stack([cols["rlnTomoXShiftAngst"], cols["rlnTomoYShiftAngst"]], 1) / pixel
    ny, nx = shape
    centre = torch.tensor([nx // 2, ny // 2], dtype=torch.float64)
    relion = points @ rot[:, :2, :].transpose(-1, -2) + shift[:, None] + centre
    ours = project_points(points, tilt_angles_deg=tilts, tilt_axis_deg=-84.2, shifts_px=shifts, image_shape=shape)
    assert (relion - ours).abs().max() < 1e-9
    assert torch.allclose(cols["rlnTomoZRot"], axis)


def test_relion_to_xf_inverts_xf_to_relion():
    axis, shifts, tilts, _ = _random_geometry(6, seed=5)
    xf = geometry_to_xf(axis, shifts)
    cols = xf_to_relion(xf, tilts, pixel_size_a=1.35, image_shape=(4092, 5760), xtilt_deg=1.5)
    back = relion_to_xf(cols, pixel_size_a=1.35, image_shape=(4092, 5760))
    assert (back.xf - xf).abs().max() < 1e-10
    assert torch.equal(back.tilt_angles_deg, tilts)
    assert torch.allclose(back.xtilt_deg, torch.full((6,), 1.5, dtype=torch.float64))


def test_magnification_is_dropped_for_relion_with_a_warning():
    xf = geometry_to_xf(10.0, torch.zeros(2, 2), 1.02)
    with pytest.warns(UserWarning, match="magnification"):
        xf_to_relion(xf, torch.zeros(2), pixel_size_a=1.0, image_shape=(64, 64))


def test_bad_inputs_give_one_line_errors():
    with pytest.raises(ValueError, match=r"\(t, 6\)"):
        xf_to_geometry(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="det"):
        xf_to_geometry(torch.zeros(1, 6))
    with pytest.raises(ValueError, match="image_shape"):
        xf_to_relion(geometry_to_xf(0.0, torch.zeros(1, 2)), [0.0], pixel_size_a=1.0, image_shape=(0, 4))
    with pytest.raises(ValueError, match="missing columns"):
        relion_to_xf({"rlnTomoYTilt": [0.0]}, pixel_size_a=1.0, image_shape=(8, 8))
    with pytest.raises(ValueError, match="convention"):
        aln_to_xf([0.0], [[0.0, 0.0]], convention="imod")


# ---- real files -------------------------------------------------------------------------------


def test_alnfile_written_xf_is_reproduced_with_its_convention(corpus_root):
    from tiltflow.io.aretomo import read_aln
    from tiltflow.io.imod import read_xf

    aln = read_aln(corpus_root / "aretomo/alnfile_global_no_local.aln")
    corpus_xf = read_xf(corpus_root / "aretomo/alnfile_global_no_local.xf")
    rot, tx_ty = aln.column("ROT"), torch.stack([aln.column("TX"), aln.column("TY")], 1)
    ours = aln_to_xf(rot, tx_ty, convention="alnfile")
    # the file prints 7 decimals for A and 4 for D: measured 1.6e-8 and 4.9e-5
    assert (ours[:, :4] - corpus_xf[:, :4]).abs().max() < 5e-8
    assert (ours[:, 4:] - corpus_xf[:, 4:]).abs().max() < 5e-5 + 1e-9
    # DESIGN/AreTomo's own writer differs only by the sign of the rotation (A transposed)
    design = aln_to_xf(rot, tx_ty)
    assert (design[:, [0, 2, 1, 3]] - corpus_xf[:, :4]).abs().max() < 5e-8
    assert (design - corpus_xf).abs().max() > 1.0
    back = xf_to_aln(corpus_xf, convention="alnfile")
    assert (back.tilt_axis_deg - rot).abs().max() < 1e-5
    assert (back.shifts_px - tx_ty).abs().max() < 1e-4


def test_imod_xf_rotation_is_minus_the_etomo_tilt_axis(corpus_root):
    from tiltflow.io.imod import read_com, read_xf

    folder = corpus_root / "imod/etomofiles_TS_001"
    edf = (folder / "TS_001.edf").read_text()
    axis_edf = float(re.search(r"Setup\.ImageRotationA=([-\d.]+)", edf).group(1))  # 83.9
    geo = xf_to_geometry(read_xf(folder / "TS_001.xf"))
    assert abs(geo.tilt_axis_deg.mean().item() - axis_edf) < 0.5  # measured 84.1 vs 83.9
    bb = xf_to_geometry(read_xf(corpus_root / "imod/IMOD_BB_tutorial/BBa.xf"))
    xcorr = read_com(corpus_root / "imod/IMOD_BB_tutorial/xcorra.com")[0]
    start = float(xcorr.options["RotationAngle"])  # -12.5, refined by tiltalign to about -10.9
    assert abs(bb.tilt_axis_deg.mean().item() - start) < 2.0


def test_aretomo_rot_has_the_sign_of_the_imod_tilt_axis(corpus_root):
    # cryoet-alignment test files: an IMOD .xf of the same data set (not converted from the .aln)
    from tiltflow.io.aretomo import read_aln
    from tiltflow.io.imod import read_xf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aln = read_aln(corpus_root / "aretomo/cryoet-alignment_test.aln", strict=False)
    imod_xf = read_xf(corpus_root / "aretomo/cryoet-alignment_test.xf")
    imod_axis = xf_to_geometry(imod_xf).tilt_axis_deg
    rot = aln.column("ROT")[0].item()  # -12.66; IMOD -11.38 .. -11.41
    assert (imod_axis - rot).abs().max() < 1.5
    as_alnfile = xf_to_aln(imod_xf, convention="alnfile")
    assert (as_alnfile.tilt_axis_deg - rot).abs().min() > 20.0


def test_relion5_tilt_series_star_round_trips_and_matches_nominal_axis(corpus_root):
    from tiltflow.io.relion import read_tilt_series_star

    ts = read_tilt_series_star(corpus_root / "relion/cryocat_relion5_TS_01_tilt.star")
    table = ts.tilts
    imod = relion_to_xf(table, pixel_size_a=1.35, image_shape=(3838, 3710))
    back = xf_to_relion(
        imod.xf, imod.tilt_angles_deg, pixel_size_a=1.35, image_shape=(3838, 3710), xtilt_deg=imod.xtilt_deg
    )
    for col in RELION_ALIGNMENT_COLUMNS:
        assert (back[col] - torch.tensor(table[col].to_numpy())).abs().max() < 1e-9, col
    nominal_axis = torch.tensor(table["rlnTomoNominalTiltAxisAngle"].to_numpy())
    assert (back["rlnTomoZRot"] - nominal_axis).abs().max() < 1.0  # 85.03 .. 85.58 vs 85
    nominal_tilt = torch.tensor(table["rlnTomoNominalStageTiltAngle"].to_numpy())
    assert (back["rlnTomoYTilt"] - nominal_tilt).abs().max() < 0.01


def test_warp_axis_and_angles_give_the_relion_projection_matrices(corpus_root):
    # Warp 2's RELION export of the same tilt series (TS_1): ProjX/Y/Z = Rz(AxisAngle) Ry(Angle)
    from tiltflow.io.relion import parse_projection_matrices, read_tomograms_star
    from tiltflow.io.warp import read_warp_xml

    warp = read_warp_xml(corpus_root / "warp/warpxmlfile_EMPIAR-10491_TS_1.xml")
    star = read_tomograms_star(corpus_root / "relion/cryocat_warp2_matching_tomograms.star")
    proj = parse_projection_matrices(star.tilt_series["TS_1.tomostar"])
    rot = relion_rotation_matrices(0.0, warp.per_tilt["Angles"], warp.per_tilt["AxisAngle"])
    assert (proj[:, :3, :3] - rot).abs().max() < 1e-6  # measured 2.4e-7 (float32 text)
    assert math.isclose(warp.per_tilt["AxisAngle"][0], -85.59953)
