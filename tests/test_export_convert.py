"""core/alignment_convert.py: series <-> AreTomo .aln rows, .xf <-> Warp axis/offsets; round trips,
Warp's own import formula, and the corpus files (.aln next to its .xf/.tlt, Warp XMLs)."""

import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from tiltflow.core.alignment_convert import (
    AlnRows,
    SeriesAlignment,
    aln_rows_to_series,
    series_to_aln_rows,
    warp_to_xf,
    xf_point_difference_px,
    xf_to_warp,
)
from tiltflow.core.transforms import geometry_to_xf, xf_to_geometry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus_root() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus"))
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


def _series(t=9, seed=0, magnification=1.0):
    g = torch.Generator().manual_seed(seed)
    axis = 84.0 + torch.rand(t, generator=g, dtype=torch.float64)
    shifts = torch.randn(t, 2, generator=g, dtype=torch.float64) * 30
    mag = 1.0 + (magnification - 1.0) * torch.rand(t, generator=g, dtype=torch.float64)
    tilts = torch.linspace(-40, 40, t, dtype=torch.float64) + 0.7
    enabled = torch.ones(t, dtype=torch.bool)
    enabled[[0, t - 2]] = False
    return SeriesAlignment(geometry_to_xf(axis, shifts, mag), tilts, enabled), axis, shifts, mag


def test_series_to_aln_rows_and_back_keeps_enabled_views_exactly():
    al, axis, shifts, mag = _series(magnification=1.01)
    rows = series_to_aln_rows(al)
    assert rows.raw_indices.tolist() == [1, 2, 3, 4, 5, 6, 8]
    assert torch.allclose(rows.rot_deg, axis[rows.raw_indices], atol=1e-10)
    assert torch.allclose(rows.shifts_px, shifts[rows.raw_indices], atol=1e-10)
    assert torch.allclose(rows.gmag, mag[rows.raw_indices], atol=1e-12)
    raw = torch.linspace(-40, 40, 9, dtype=torch.float64)
    back = aln_rows_to_series(rows, n_views=9, raw_tilt_angles_deg=raw)
    assert torch.equal(back.enabled, al.enabled)
    keep = al.enabled
    assert (back.xf[keep] - al.xf[keep]).abs().max() < 1e-12
    assert torch.equal(back.tilt_angles_deg[~keep], raw[~keep])  # dark views keep their raw angle
    assert torch.equal(back.xf[0], torch.tensor([1.0, 0, 0, 1, 0, 0], dtype=torch.float64))


def test_aln_shift_scale_is_binning_of_the_aln_stack():
    rows = AlnRows(
        torch.tensor([80.0]), torch.tensor([1.0]), torch.tensor([[3.0, -2.0]]), torch.tensor([0.0]), torch.tensor([0])
    )
    bin1 = aln_rows_to_series(rows, n_views=1, raw_tilt_angles_deg=torch.zeros(1), shift_scale=4.0)
    assert torch.allclose(xf_to_geometry(bin1.xf).shifts_px, torch.tensor([[12.0, -8.0]], dtype=torch.float64))
    outside = AlnRows(rows.rot_deg, rows.gmag, rows.shifts_px, rows.tilt_deg, torch.tensor([3]))
    with pytest.raises(ValueError, match="distinct indices"):
        aln_rows_to_series(outside, n_views=1, raw_tilt_angles_deg=torch.zeros(1))


def test_warp_round_trip_and_warp_own_import_formula():
    al, axis, shifts, _ = _series()
    geo = xf_to_warp(al.xf, pixel_size_a=1.7)
    assert (warp_to_xf(geo.axis_angle_deg, geo.offsets_a, pixel_size_a=1.7) - al.xf).abs().max() < 1e-12
    # WarpTools ts_import_alignments: Rotation = [[A11, A12], [A21, A22]], AxisAngle = EulerFromMatrix
    # gamma = atan2(-M21, M11) for a pure z rotation, offsets = Rotation^T (-DX, -DY) * pixel size
    a = al.xf[:, :4].reshape(-1, 2, 2)
    gamma = torch.rad2deg(torch.atan2(-a[:, 1, 0], a[:, 0, 0]))
    offsets = (a.transpose(-1, -2) @ (-al.xf[:, 4:, None])).squeeze(-1) * 1.7
    assert (geo.axis_angle_deg - gamma).abs().max() < 1e-10
    assert (geo.offsets_a - offsets).abs().max() < 1e-10
    assert torch.allclose(geo.axis_angle_deg, axis) and torch.allclose(geo.offsets_a, shifts * 1.7)


def test_warp_drops_magnification_with_a_warning():
    al, *_ = _series(magnification=1.02)
    with pytest.warns(UserWarning, match="magnification|rotation"):
        xf_to_warp(al.xf, pixel_size_a=1.0)


def test_chain_xf_aln_relion_warp_and_back_is_exact():
    """.xf + .tlt -> .aln rows -> series -> RELION columns -> .xf -> Warp -> .xf: nothing drifts."""
    from tiltflow.core.transforms import relion_to_xf, xf_to_relion

    al, *_ = _series(t=11, seed=3)
    keep = al.enabled
    via_aln = aln_rows_to_series(series_to_aln_rows(al), n_views=11, raw_tilt_angles_deg=al.tilt_angles_deg)
    cols = xf_to_relion(via_aln.xf[keep], via_aln.tilt_angles_deg[keep], pixel_size_a=1.35, image_shape=(4092, 5760))
    via_relion = relion_to_xf(cols, pixel_size_a=1.35, image_shape=(4092, 5760))
    warp = xf_to_warp(via_relion.xf, pixel_size_a=1.35)
    final = warp_to_xf(warp.axis_angle_deg, warp.offsets_a, pixel_size_a=1.35)
    assert xf_point_difference_px(final, al.xf[keep], (4092, 5760)).max() < 1e-8
    assert (via_relion.tilt_angles_deg - al.tilt_angles_deg[keep]).abs().max() < 1e-12
    assert torch.equal(via_aln.enabled, al.enabled)


def test_xf_point_difference_known_answer():
    xf = geometry_to_xf(torch.tensor([0.0, 30.0]), torch.zeros(2, 2, dtype=torch.float64))
    moved = xf.clone()
    moved[:, 4] += 0.25  # a pure shift moves every point by it
    assert torch.allclose(xf_point_difference_px(xf, moved, (64, 96)), torch.full((2,), 0.25, dtype=torch.float64))
    turned = geometry_to_xf(torch.tensor([0.1, 30.1]), torch.zeros(2, 2, dtype=torch.float64))
    corner = math.hypot(47.5, 31.5) * 2 * math.sin(math.radians(0.05))  # a 0.1° turn about the centre
    assert torch.allclose(xf_point_difference_px(xf, turned, (64, 96)), torch.full((2,), corner, dtype=torch.float64))


# ---- real files -------------------------------------------------------------------------------


def test_corpus_aln_converts_to_its_companion_xf_and_tlt(corpus_root):
    """alnfile_global_no_local.{aln,xf,tlt}: the .xf was written by teamtomo alnfile (A = R(+ROT));
    ours follows AreTomo/DESIGN (A = R(-ROT)): same raw shifts, opposite rotation, same angles."""
    from tiltflow.io.aretomo import read_aln
    from tiltflow.io.imod import read_tlt, read_xf

    d = corpus_root / "aretomo"
    aln = read_aln(d / "alnfile_global_no_local.aln")
    rows = AlnRows(
        aln.column("ROT"),
        aln.column("GMAG"),
        torch.stack([aln.column("TX"), aln.column("TY")], 1),
        aln.column("TILT"),
        aln.raw_indices(),
    )
    ours = aln_rows_to_series(rows, n_views=61, raw_tilt_angles_deg=torch.zeros(61))
    corpus = xf_to_geometry(read_xf(d / "alnfile_global_no_local.xf"))
    mine = xf_to_geometry(ours.xf)
    assert (mine.shifts_px - corpus.shifts_px).abs().max() < 1e-4  # measured 4.9e-5 (printed decimals)
    assert (mine.tilt_axis_deg + corpus.tilt_axis_deg).abs().max() < 1e-5
    assert (ours.tilt_angles_deg - read_tlt(d / "alnfile_global_no_local.tlt")).abs().max() < 1e-9
    assert bool(ours.enabled.all())
    # and back to rows: the .aln values to their printed precision
    again = series_to_aln_rows(ours)
    assert (again.rot_deg - rows.rot_deg).abs().max() < 1e-9
    assert (again.shifts_px - rows.shifts_px).abs().max() < 1e-9


def test_corpus_cryoet_aln_axis_agrees_with_the_imod_xf_of_the_same_data(corpus_root):
    """cryoet-alignment_test: an IMOD .xf made independently of the (truncated) .aln; our reading of
    ROT puts the tilt axis within 1.5° of IMOD's (the other sign would be 25° off)."""
    from tiltflow.io.aretomo import read_aln
    from tiltflow.io.imod import read_xf

    d = corpus_root / "aretomo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aln = read_aln(d / "cryoet-alignment_test.aln", strict=False)
    rows = AlnRows(
        aln.column("ROT"),
        aln.column("GMAG"),
        torch.stack([aln.column("TX"), aln.column("TY")], 1),
        aln.column("TILT"),
        torch.arange(4),
    )
    ours = aln_rows_to_series(rows, n_views=4, raw_tilt_angles_deg=torch.zeros(4))
    imod = xf_to_geometry(read_xf(d / "cryoet-alignment_test.xf"))
    assert (xf_to_geometry(ours.xf).tilt_axis_deg[:3] - imod.tilt_axis_deg).abs().max() < 1.5  # 12.66 vs 11.4


@pytest.mark.parametrize("name", ["warpxmlfile_EMPIAR-10491_TS_1.xml", "pytom-match-pick_gs04_ts_003.xml"])
def test_corpus_warp_geometry_round_trips_through_xf(corpus_root, name):
    from tiltflow.io.warp import read_warp_xml

    w = read_warp_xml(corpus_root / "warp" / name)
    pixel = float(w.param("CTF", "PixelSize"))
    axis = torch.tensor(w.per_tilt["AxisAngle"], dtype=torch.float64)
    offsets = torch.tensor([w.per_tilt["AxisOffsetX"], w.per_tilt["AxisOffsetY"]], dtype=torch.float64).T
    xf = warp_to_xf(axis, offsets, pixel_size_a=pixel)
    back = xf_to_warp(xf, pixel_size_a=pixel)
    assert (torch.remainder(back.axis_angle_deg - axis + 180, 360) - 180).abs().max() < 1e-9
    assert (back.offsets_a - offsets).abs().max() < 1e-9
