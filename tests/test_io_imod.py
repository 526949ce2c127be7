"""IMOD files: .xf, local .xf, .tlt/.rawtlt/.xtilt, fid.xyz, .com, binary .mod/.fid."""

import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiltflow.io.imod import (
    ComProgram,
    FidXyz,
    ImodFormatError,
    TiltComSettings,
    fiducial_model,
    format_imod_list,
    newst_com,
    parse_imod_list,
    read_com,
    read_fid_xyz,
    read_local_xf,
    read_mod,
    read_tlt,
    read_xf,
    read_xtilt,
    tilt_com,
    write_com,
    write_fid_xyz,
    write_local_xf,
    write_mod,
    write_tlt,
    write_xf,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def imod_dir() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus")) / "imod"
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


# ---- .xf ---------------------------------------------------------------------------------------

XF_FILES = {
    "IMOD_BB_tutorial/BBa.xf": 61,
    "IMOD_BB_tutorial/BBb.xf": 61,
    "IMOD_BB_tutorial/BBa.tltxf": 61,
    "IMOD_BB_tutorial/BBb.tltxf": 61,
    "cryoet-alignment_imod_1/tilt_1.xf": 59,
    "etomofiles_TS_001/TS_001.xf": 40,
}


@pytest.mark.parametrize("name,views", XF_FILES.items())
def test_corpus_xf_reads_and_rewrites_byte_for_byte(imod_dir, tmp_path, name, views):
    xf = read_xf(imod_dir / name)
    assert xf.shape == (views, 6) and xf.dtype == torch.float64
    write_xf(tmp_path / "out.xf", xf)
    assert (tmp_path / "out.xf").read_text() == (imod_dir / name).read_text()


def test_xf_known_values(imod_dir):
    xf = read_xf(imod_dir / "IMOD_BB_tutorial/BBa.xf")
    assert xf[0].tolist() == [0.9787406, -0.1898027, 0.1861717, 0.9824202, -20.199, 1.22]


def test_xf_glued_fortran_numbers_and_blank_lines(tmp_path):
    (tmp_path / "g.xf").write_text("\n 1.0000000 0.0000000-0.0000000 1.0000000-1234.567   2.5\n\n")
    assert read_xf(tmp_path / "g.xf").tolist() == [[1.0, 0.0, -0.0, 1.0, -1234.567, 2.5]]


def test_malformed_xf_line_strict_raises_with_file_and_line(tmp_path):
    path = tmp_path / "bad.xf"
    path.write_text("1 0 0 1 0 0\n1 0 0 1 0\n")
    with pytest.raises(ImodFormatError, match=r"bad\.xf:2: expected 6 numbers"):
        read_xf(path)
    with pytest.warns(UserWarning, match=r"bad\.xf:2"):
        assert read_xf(path, strict=False).shape == (1, 6)
    path.write_text("1 0 0 1 zero 0\n")
    with pytest.raises(ImodFormatError, match=r"bad\.xf:1: not a list of numbers"):
        read_xf(path)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=6, max_size=6), min_size=1, max_size=8))
def test_xf_write_read_round_trip_to_printed_precision(rows):
    import tempfile

    xf = torch.tensor(rows, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as d:
        write_xf(Path(d) / "p.xf", xf)
        back = read_xf(Path(d) / "p.xf")
    assert (back[:, :4] - xf[:, :4]).abs().max() <= 5e-8 + 1e-12
    assert (back[:, 4:] - xf[:, 4:]).abs().max() <= 5e-4 + 1e-9


# ---- local .xf ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,zfac", [("BBalocal.xf", True), ("BBblocal.xf", True), ("BBalocal_patch-tracking.xf", False)]
)
def test_local_xf_counts_and_byte_round_trip(imod_dir, tmp_path, name, zfac):
    path = imod_dir / "IMOD_BB_tutorial" / name
    local = read_local_xf(path)
    assert local.n_areas == (2, 2) and local.xf.shape == (4, 61, 6)
    assert local.delta_tilt_deg.shape == (4, 61) and local.pixel_size_a == pytest.approx(20.2)
    assert (local.zfactors is not None) == zfac and local.delta_alpha_deg is None
    write_local_xf(tmp_path / "l.xf", local)
    assert (tmp_path / "l.xf").read_text() == path.read_text()
    with pytest.raises(ImodFormatError, match="n_views"):
        read_local_xf(path, n_views=60)


# ---- .tlt / .rawtlt / .xtilt -------------------------------------------------------------------

TLT_FILES = {
    "IMOD_BB_tutorial/BBa.tlt": (61, 65.06),
    "IMOD_BB_tutorial/BBb.tlt": (61, 64.73),
    "cryoet-alignment_imod_1/tilt_1.tlt": (59, -52.24),
    "etomofiles_TS_001/TS_001.tlt": (40, -57.12),
    "etomofiles_TS_001/TS_001.rawtlt": (40, -60.0),
    "pytom_testData/angles.tlt": (59, -60.0),
    "pytom-match-pick/test_angles.rawtlt": (35, -51.0),
    "pytom-match-pick/test_angles_multi_column.rawtlt": (35, -51.0),
}


@pytest.mark.parametrize("name,expected", TLT_FILES.items())
def test_corpus_tilt_angle_files(imod_dir, name, expected):
    angles = read_tlt(imod_dir / name)
    assert angles.shape == (expected[0],) and angles[0].item() == expected[1]


def test_multi_column_rawtlt_and_xtilt(imod_dir, tmp_path):
    path = imod_dir / "pytom-match-pick/test_angles_multi_column.rawtlt"
    assert torch.equal(read_tlt(path), read_tlt(imod_dir / "pytom-match-pick/test_angles.rawtlt"))
    assert read_tlt(path, column=1).tolist() == list(range(35))
    with pytest.raises(ImodFormatError, match="column 2"):
        read_tlt(path, column=2)
    xtilt = read_xtilt(imod_dir / "etomofiles_TS_001/TS_001.xtilt")
    assert xtilt.shape == (40,) and xtilt[0].item() == -0.01
    assert read_xtilt(imod_dir / "IMOD_BB_tutorial/BBa.xtilt").abs().max() == 0
    write_tlt(tmp_path / "m.rawtlt", read_tlt(path), extra_columns=torch.arange(35)[:, None])
    indices = read_tlt(tmp_path / "m.rawtlt", column=1)
    assert torch.equal(indices, torch.arange(35.0, dtype=torch.float64))


def test_tlt_byte_round_trip(imod_dir, tmp_path):
    src = imod_dir / "IMOD_BB_tutorial/BBa.tlt"
    write_tlt(tmp_path / "a.tlt", read_tlt(src))
    assert (tmp_path / "a.tlt").read_text() == src.read_text()


def test_ragged_tlt_columns_are_reported(tmp_path):
    (tmp_path / "r.rawtlt").write_text("-3.0 0\n0.0\n")
    with pytest.raises(ImodFormatError, match=r"r\.rawtlt:2: expected 2 numbers"):
        read_tlt(tmp_path / "r.rawtlt")


# ---- fid.xyz -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BBafid.xyz", "BBbfid.xyz"])
def test_fid_xyz_counts_and_byte_round_trip(imod_dir, tmp_path, name):
    path = imod_dir / "IMOD_BB_tutorial" / name
    fid = read_fid_xyz(path)
    assert fid.xyz.shape == (23, 3) and fid.pixel_size_a == pytest.approx(20.2)
    assert fid.image_size == (512, 512)
    write_fid_xyz(tmp_path / "f.xyz", fid)
    assert (tmp_path / "f.xyz").read_text() == path.read_text()


def test_fid_xyz_values(imod_dir):
    fid = read_fid_xyz(imod_dir / "IMOD_BB_tutorial/BBafid.xyz")
    assert fid.xyz[0].tolist() == [244.5, 242.64, 46.24]
    assert fid.point[-1].item() == 23 and fid.contour[-1].item() == 25
    assert isinstance(fid, FidXyz) and int(fid.object.unique().item()) == 1


# ---- .com --------------------------------------------------------------------------------------


def test_corpus_com_files(imod_dir):
    tilt = read_com(imod_dir / "IMOD_BB_tutorial/tilta.com")
    assert [p.program for p in tilt] == ["tilt"] and len(tilt[0].options) == 21
    opts = tilt[0].options
    assert opts["FULLIMAGE"] == "512 512" and opts["EXCLUDELIST"] == "1"
    assert opts["XAXISTILT"] == "1.94" and opts["PERPENDICULAR"] == "" and opts["THICKNESS"] == "84"
    xcorr = read_com(imod_dir / "IMOD_BB_tutorial/xcorrb.com")[0]
    assert xcorr.program == "tiltxcorr" and xcorr.options["RotationAngle"] == "-12.5"
    newst = read_com(imod_dir / "cryoet-alignment_imod_1/newst.com")[0]
    assert newst.environment == {"IMOD_OUTPUT_FORMAT": "MRC"}
    assert newst.arguments == "-StandardInput"
    assert newst.options["BinByFactor"] == "4" and newst.options["SizeToOutputInXandY"] == "928,958"
    assert "DistortionField" not in newst.options and len(newst.options) == 10
    tilt_1 = read_com(imod_dir / "cryoet-alignment_imod_1/tilt.com")[0].options
    assert len(tilt_1) == 19 and tilt_1["FULLIMAGE"] == "3708 3832" and tilt_1["IMAGEBINNED"] == "4"


def test_cryocat_tilt_com(imod_dir):
    prog = read_com(imod_dir.parent / "cryocat_TS_017/tilt.com")[0]
    assert prog.options["THICKNESS"] == "1500" and prog.options["Mode"] == "2"
    assert len(prog.options) == 17


def test_com_writers_round_trip(tmp_path):
    programs = [
        newst_com(
            input_file="ts.st", output_file="ts.ali", transform_file="ts.xf", bin_by=4, size_to_output_xy=(928, 958)
        ),
        tilt_com(
            input_projections="ts.ali",
            output_file="ts.rec",
            tilt_file="ts.tlt",
            settings=TiltComSettings(
                thickness_px=300, full_image_xy=(3708, 3832), image_binned=4, exclude_views=(1, 2, 3, 41)
            ),
            xtilt_file="ts.xtilt",
        ),
    ]
    write_com(tmp_path / "both.com", programs)
    back = read_com(tmp_path / "both.com")
    assert back == programs
    assert back[1].options["EXCLUDELIST"] == "1-3,41"
    assert back[0].options["SizeToOutputInXandY"] == "928,958"


def test_com_repeated_key_and_orphan_option(tmp_path):
    path = tmp_path / "x.com"
    path.write_text("$tilt -StandardInput\nTHICKNESS 10\nTHICKNESS 20\n")
    with pytest.raises(ImodFormatError, match=r"x\.com:3: THICKNESS given twice"):
        read_com(path)
    with pytest.warns(UserWarning):
        assert read_com(path, strict=False)[0].options["THICKNESS"] == "20"
    path.write_text("THICKNESS 10\n")
    with pytest.raises(ImodFormatError, match=r"x\.com:1: option 'THICKNESS' before any"):
        read_com(path)
    assert ComProgram("tilt").options == {}


def test_imod_lists():
    assert parse_imod_list("1,4-6, 41") == [1, 4, 5, 6, 41]
    assert format_imod_list([41, 6, 5, 4, 1, 1]) == "1,4-6,41"
    with pytest.raises(ValueError, match="not an IMOD list entry"):
        parse_imod_list("1,a")


@given(st.sets(st.integers(1, 200), max_size=40))
def test_imod_list_round_trip(values):
    assert parse_imod_list(format_imod_list(values)) == sorted(values)


# ---- binary models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,contours,sized,first",
    [
        ("cryocat_modMotl_correct111.mod", 161, 3, [128.5, 699.0, -76.0]),
        ("cryocat_modMotl_correct189.mod", 74, 2, [98.5, 691.5, 112.0]),
    ],
)
def test_corpus_models(imod_dir, tmp_path, name, contours, sized, first):
    path = imod_dir / name
    model = read_mod(path)
    assert model.header["name"] == "IMOD-NewModel"
    assert (model.header["xmax"], model.header["ymax"], model.header["zmax"]) == (507, 720, 225)
    assert len(model.objects) == 1
    obj = model.objects[0]
    assert len(obj.contours) == contours and obj.header["contsize"] == contours
    assert all(c.points.shape == (1, 3) for c in obj.contours)
    assert sum(c.sizes is not None for c in obj.contours) == sized
    assert obj.contours[0].points[0].tolist() == first
    assert [cid for cid, _ in obj.chunks] == [b"IMAT"]
    assert [cid for cid, _ in model.chunks] == [b"VIEW", b"VIEW", b"MINX"]
    write_mod(tmp_path / "m.mod", model)
    original, ours = path.read_bytes(), (tmp_path / "m.mod").read_bytes()
    # identical except the 128-byte name field, where 3dmod left bytes after the terminating NUL
    assert len(ours) == len(original)
    assert ours[:8] + ours[136:] == original[:8] + original[136:]
    again = read_mod(tmp_path / "m.mod")
    assert again.header == model.header
    pairs = zip(again.objects[0].contours, obj.contours, strict=False)
    assert all(torch.equal(a.points, b.points) for a, b in pairs)


def test_fiducial_model_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    beads = [torch.cat([torch.rand(n, 2, generator=g) * 512, torch.arange(n)[:, None].float()], 1) for n in (41, 12, 1)]
    model = fiducial_model(
        beads, image_shape=(480, 512), n_views=41, pixel_size_a=2.7, sizes=[torch.full((n,), 4.5) for n in (41, 12, 1)]
    )
    write_mod(tmp_path / "ts.fid", model)
    back = read_mod(tmp_path / "ts.fid")
    assert (back.header["xmax"], back.header["ymax"], back.header["zmax"]) == (512, 480, 41)
    assert back.header["objsize"] == 1 and back.objects[0].header["contsize"] == 3
    for c, pts in zip(back.objects[0].contours, beads, strict=False):
        assert torch.equal(c.points, pts) and torch.equal(c.sizes, torch.full((len(pts),), 4.5))
    assert [c.flags for c in back.objects[0].contours] == [16, 16, 0]  # wild across views
    write_mod(tmp_path / "again.fid", back)
    assert (tmp_path / "again.fid").read_bytes() == (tmp_path / "ts.fid").read_bytes()


def test_bad_models_are_reported(tmp_path, imod_dir):
    (tmp_path / "no.mod").write_bytes(b"IMODV0.1" + bytes(232))
    with pytest.raises(ImodFormatError, match="not an IMOD V1.2"):
        read_mod(tmp_path / "no.mod")
    data = (imod_dir / "cryocat_modMotl_correct189.mod").read_bytes()
    (tmp_path / "cut.mod").write_bytes(data[:1000])
    with pytest.raises(ImodFormatError, match=r"cut\.mod: byte \d+: bad"):
        read_mod(tmp_path / "cut.mod")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = read_mod(tmp_path / "cut.mod", strict=False)
    assert caught and 0 < len(model.objects[0].contours) < 74
    assert struct.unpack(">i", data[8 + 140 : 8 + 144])[0] == 1  # objsize field position
