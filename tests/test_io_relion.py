"""RELION 5 STAR files: tomograms.star, per-tilt-series STAR and the other corpus STAR files."""

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tiltflow.core.transforms import geometry_to_xf, relion_to_xf, xf_to_relion
from tiltflow.io.relion import (
    RelionFormatError,
    TiltSeriesStar,
    TomogramsStar,
    format_projection_matrices,
    parse_projection_matrices,
    read_star_blocks,
    read_tilt_series_star,
    read_tomograms_star,
    write_star_blocks,
    write_tilt_series_star,
    write_tomograms_star,
)

REPO = Path(__file__).resolve().parents[1]
PYTOM = "pytom-match-pick_relion5_project_example/Tomograms/job009"


@pytest.fixture
def relion_dir() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus")) / "relion"
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        a.reset_index(drop=True), b.reset_index(drop=True), check_exact=False, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "name,rows,cols,embedded",
    [
        ("cryocat_R5_tutorial_run_tomograms.star", 5, 16, 0),
        (f"{PYTOM}/tomograms.star", 10, 13, 0),
        ("cryocat_warp2_matching_tomograms.star", 5, 13, 5),
    ],
)
def test_tomograms_star_counts_and_round_trip(relion_dir, tmp_path, name, rows, cols, embedded):
    star = read_tomograms_star(relion_dir / name)
    assert star.tomograms.shape == (rows, cols) and len(star.tilt_series) == embedded
    assert all(t.shape == (41, 9) for t in star.tilt_series.values())
    write_tomograms_star(tmp_path / "tomograms.star", star)
    text = (tmp_path / "tomograms.star").read_text()
    assert text.count("# version 50001") == 1 + embedded
    back = read_tomograms_star(tmp_path / "tomograms.star")
    _same(back.tomograms, star.tomograms)
    for key, table in star.tilt_series.items():
        _same(back.tilt_series[key], table)


def test_tomograms_star_values(relion_dir):
    star = read_tomograms_star(relion_dir / "cryocat_R5_tutorial_run_tomograms.star")
    row = star.tomograms.iloc[0]
    assert row["rlnTomoName"] == "TS_01" and row["rlnTomoTiltSeriesPixelSize"] == 1.35
    assert row["rlnTomoTiltSeriesStarFile"] == "Tomograms/job006/tilt_series/TS_01.star"
    assert row["rlnTomoSizeZ"] == 2000 and row["rlnTomoHand"] == -1.0


@pytest.mark.parametrize(
    "name,block,rows,cols",
    [
        ("cryocat_relion5_TS_01_tilt.star", "TS_01", 40, 28),
        (f"{PYTOM}/tilt_series/tomo200528_107.star", "tomo200528_107", 35, 25),
        ("tomo_preprocessing_import_TS_01.star", "tilt_images", 41, 9),
    ],
)
def test_tilt_series_star_counts_and_round_trip(relion_dir, tmp_path, name, block, rows, cols):
    ts = read_tilt_series_star(relion_dir / name)
    assert ts.name == block and ts.tilts.shape == (rows, cols)
    assert not ts.tilts.isna().any().any()
    write_tilt_series_star(tmp_path / "ts.star", ts)
    back = read_tilt_series_star(tmp_path / "ts.star")
    assert back.name == block
    _same(back.tilts, ts.tilts)


def test_aligned_tilt_series_agree_with_nominal_axes(relion_dir):
    for name, nominal in (
        ("cryocat_relion5_TS_01_tilt.star", 85.0),
        (f"{PYTOM}/tilt_series/tomo200528_107.star", -91.0),
    ):
        tilts = read_tilt_series_star(relion_dir / name).tilts
        assert (tilts["rlnTomoNominalTiltAxisAngle"] == nominal).all()
        assert (tilts["rlnTomoZRot"] - nominal).abs().max() < 1.0  # 0.58 and 0.45 measured
        assert (tilts["rlnTomoYTilt"] - tilts["rlnTomoNominalStageTiltAngle"]).abs().max() < 0.02


@pytest.mark.parametrize(
    "name,blocks",
    [
        ("cryocat_warp2_matching_optimisation_set.star", {"": 2}),
        ("tiltstack_EMPIAR-10164_TS_01_corrected_micrographs.star", {"optics": 1, "micrographs": 205}),
        ("tomo_preprocessing_relion_motion_correction_output.star", {"optics": 1, "micrographs": 41}),
    ],
)
def test_other_star_files_read_and_round_trip(relion_dir, tmp_path, name, blocks):
    data = read_star_blocks(relion_dir / name)
    assert {k: len(v) for k, v in data.items()} == blocks
    write_star_blocks(tmp_path / "x.star", data)
    back = read_star_blocks(tmp_path / "x.star")
    for key, value in data.items():
        if isinstance(value, pd.DataFrame):
            _same(back[key], value)
        else:
            assert back[key] == value
    if "micrographs" in data:
        assert data["optics"]["rlnMicrographOriginalPixelSize"].iloc[0] == 1.35


def test_projection_matrices_parse_and_format(relion_dir):
    star = read_tomograms_star(relion_dir / "cryocat_warp2_matching_tomograms.star")
    table = star.tilt_series["TS_17.tomostar"]
    proj = parse_projection_matrices(table)
    assert proj.shape == (41, 4, 4)
    assert proj[0, 0].tolist() == [0.05876775, 0.99705213, -0.049329475, 0]
    rot = proj[:, :3, :3]
    assert (rot @ rot.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-6
    again = parse_projection_matrices(pd.DataFrame(format_projection_matrices(proj)))
    assert torch.equal(again, proj)


def test_alignment_columns_survive_a_star_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    xf = geometry_to_xf(84.7, torch.randn(5, 2, generator=g, dtype=torch.float64) * 20)
    tilts = torch.linspace(-60, 60, 5, dtype=torch.float64)
    cols = xf_to_relion(xf, tilts, pixel_size_a=1.724, image_shape=(4092, 5760))
    table = pd.DataFrame({k: v.numpy() for k, v in cols.items()})
    table.insert(0, "rlnMicrographName", [f"TS_1_{i:03d}.mrc" for i in range(5)])
    write_tilt_series_star(tmp_path / "TS_1.star", TiltSeriesStar("TS_1", table))
    back = relion_to_xf(
        read_tilt_series_star(tmp_path / "TS_1.star").tilts, pixel_size_a=1.724, image_shape=(4092, 5760)
    )
    # the STAR file prints 6 decimals: Å shifts to 1e-6 -> xf shifts within ~1e-6 px
    assert (back.xf - xf).abs().max() < 1e-5
    assert (back.tilt_angles_deg - tilts).abs().max() < 1e-6


def test_errors_name_file_and_problem(relion_dir, tmp_path):
    with pytest.raises(RelionFormatError, match="no 'data_global' loop"):
        read_tomograms_star(relion_dir / "cryocat_relion5_TS_01_tilt.star")
    with pytest.raises(RelionFormatError, match="no loop block"):
        read_tilt_series_star(relion_dir / "cryocat_warp2_matching_optimisation_set.star")
    motion = relion_dir / "tomo_preprocessing_relion_motion_correction_output.star"
    with pytest.raises(RelionFormatError, match="2 loop blocks"):
        read_tilt_series_star(motion)
    with pytest.warns(UserWarning, match="using the first"):
        first = read_tilt_series_star(motion, strict=False)
    assert first.name == "optics"
    with pytest.raises(FileNotFoundError, match="no such STAR file"):
        read_star_blocks(tmp_path / "missing.star")
    with pytest.raises(ValueError, match="without spaces"):
        bad = TiltSeriesStar("TS 1", pd.DataFrame({"a": [1]}))
        write_tilt_series_star(tmp_path / "x.star", bad)
    no_name = TomogramsStar(pd.DataFrame({"rlnTomoSizeX": [1]}))
    with pytest.raises(ValueError, match="rlnTomoName"):
        write_tomograms_star(tmp_path / "t.star", no_name)
    (tmp_path / "dup.star").write_text("data_global\n\nloop_\n_rlnTomoName #1\nTS_1\nTS_1\n")
    with pytest.raises(RelionFormatError, match="repeats a rlnTomoName"):
        read_tomograms_star(tmp_path / "dup.star")
