"""Warp tilt-series XML: UTF-8 and UTF-16 files, counts, byte round trips, errors."""

import os
from pathlib import Path

import pytest
import torch

from tiltflow.io.imod import read_tlt
from tiltflow.io.warp import WarpFormatError, read_warp_xml, write_warp_xml

REPO = Path(__file__).resolve().parents[1]
CORPUS_FILES = {
    # name: tilts, encoding, pixel size Å, first angle, axis angle, kept elements, per-tilt lists
    "warp/pytom-match-pick_gs04_ts_003.xml": (47, "utf-8-sig", "0.7303", 46.0, 84.500114, 114, 7),
    "warp/warpxmlfile_EMPIAR-10491_TS_1.xml": (41, "utf-8-sig", "0.7894", -40.01, -85.59953, 102, 8),
    "cryocat_TS_017/017.xml": (60, "utf-16", "1.97100", -52.0, 83.22321, 18, 7),
}


@pytest.fixture
def corpus_root() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus"))
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


@pytest.mark.parametrize("name,expected", CORPUS_FILES.items())
def test_corpus_xml_counts(corpus_root, name, expected):
    tilts, encoding, pixel, first, axis, kept, lists = expected
    ts = read_warp_xml(corpus_root / name)
    assert ts.n_tilts == tilts and ts.encoding == encoding and len(ts.per_tilt) == lists
    assert all(len(v) == tilts for v in ts.per_tilt.values())
    assert ts.param("CTF", "PixelSize") == pixel and ts.per_tilt["Angles"][0] == first
    assert set(ts.per_tilt["AxisAngle"]) == {axis} and all(ts.per_tilt["UseTilt"])
    assert len(ts.other) == kept and ts.order[0] == "Angles"


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_xml_rewrites_byte_for_byte(corpus_root, tmp_path, name):
    write_warp_xml(tmp_path / "out.xml", read_warp_xml(corpus_root / name))
    assert (tmp_path / "out.xml").read_bytes() == (corpus_root / name).read_bytes()


def test_utf16_file_matches_its_tlt_and_converts_to_utf8(corpus_root, tmp_path):
    ts = read_warp_xml(corpus_root / "cryocat_TS_017/017.xml")
    tlt = read_tlt(corpus_root / "cryocat_TS_017/017.tlt")
    assert (torch.tensor(ts.per_tilt["Angles"], dtype=torch.float64) - tlt).abs().max() < 0.031
    assert ts.per_tilt["MoviePath"][:2] == ["017_01.mrc", "017_02.mrc"]
    assert ts.params["OptionsCTF"]["PixelSizeX"] == "1.9710" and ts.newline == "\r\n"
    write_warp_xml(tmp_path / "u8.xml", ts, encoding="utf-8-sig")
    declaration = b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>'
    assert (tmp_path / "u8.xml").read_bytes().startswith(declaration)
    back = read_warp_xml(tmp_path / "u8.xml")
    assert back.encoding == "utf-8-sig"
    assert back.per_tilt == ts.per_tilt and back.params == ts.params


def test_edited_values_round_trip(corpus_root, tmp_path):
    ts = read_warp_xml(corpus_root / "warp/warpxmlfile_EMPIAR-10491_TS_1.xml")
    ts.per_tilt["UseTilt"][3] = False
    ts.per_tilt["AxisAngle"] = [-84.0 + 0.125 * i for i in range(ts.n_tilts)]
    write_warp_xml(tmp_path / "e.xml", ts, encoding="utf-16")
    back = read_warp_xml(tmp_path / "e.xml")
    assert back.encoding == "utf-16" and back.per_tilt == ts.per_tilt
    assert back.per_tilt["UseTilt"].count(False) == 1 and back.attributes == ts.attributes


def test_xml_errors(tmp_path, corpus_root):
    bad = tmp_path / "bad.xml"
    bad.write_text("<TiltSeries>\n<Angles>1\n2</Angle>\n</TiltSeries>")
    with pytest.raises(WarpFormatError, match=r"bad\.xml:3:\d+: not well-formed"):
        read_warp_xml(bad)
    bad.write_text("<Movie><Angles>1</Angles></Movie>")
    with pytest.raises(WarpFormatError, match="expected <TiltSeries>"):
        read_warp_xml(bad)
    bad.write_text("<TiltSeries><Angles>1\n2</Angles><Dose>0</Dose></TiltSeries>")
    with pytest.raises(WarpFormatError, match="<Dose> has 1 values, <Angles> has 2"):
        read_warp_xml(bad)
    with pytest.warns(UserWarning, match="<Dose> has 1 values"):
        loose = read_warp_xml(bad, strict=False)
    with pytest.raises(ValueError, match="differ from 2 Angles"):
        write_warp_xml(tmp_path / "no.xml", loose)
    bad.write_text("<TiltSeries><Angles>1\nx</Angles></TiltSeries>")
    with pytest.raises(WarpFormatError, match="<Angles>: not a number: 'x'"):
        read_warp_xml(bad)
    bad.write_text("<TiltSeries><Angles>1</Angles><UseTilt>yes</UseTilt></TiltSeries>")
    with pytest.raises(WarpFormatError, match="expected True/False"):
        read_warp_xml(bad)
