"""AreTomo .aln files: counts, byte round trips, dark frames, and the .aln -> .xf/.tlt relation."""

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from tiltflow.core.transforms import aln_to_xf
from tiltflow.io.aretomo import GLOBAL_COLUMNS, AlnFile, AlnFormatError, read_aln, write_aln
from tiltflow.io.imod import read_tlt, read_xf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def aln_dir() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus")) / "aretomo"
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


def test_global_no_local(aln_dir):
    aln = read_aln(aln_dir / "alnfile_global_no_local.aln")
    assert aln.RawSize == (4096, 4096, 61) and aln.NumPatches == 0
    assert len(aln.global_alignment) == 61 and aln.DarkFrame == [] and aln.local_alignment is None
    assert (aln.AlphaOffset, aln.BetaOffset, aln.Thickness) == (-7.0, 0.0, 2050)
    assert list(aln.global_alignment.columns) == list(GLOBAL_COLUMNS)
    first = aln.global_alignment.iloc[0]
    assert (first["SEC"], first["ROT"], first["TX"], first["TY"], first["TILT"]) == (1, -95.404, 9.22, 103.933, -63.2)
    assert torch.equal(aln.raw_indices(), torch.arange(61))


def test_global_and_local_with_dark_frames(aln_dir):
    aln = read_aln(aln_dir / "alnfile_global_and_local.aln")
    assert aln.RawSize == (4096, 4096, 51) and aln.NumPatches == 16
    assert len(aln.global_alignment) == 37 and len(aln.DarkFrame) == 14
    assert len(aln.local_alignment) == 37 * 16 and aln.Thickness == 1910 and aln.AlphaOffset == 12.3
    assert aln.DarkFrame[0] == (0, 0, -68.0) and aln.DarkFrame[-1] == (13, 13, -42.0)
    assert aln.global_alignment["SEC"].tolist() == list(range(37))  # older 0-based numbering
    assert torch.equal(aln.raw_indices(), torch.arange(14, 51))
    tilts = aln.raw_tilt_angles()
    assert tilts[0].item() == -68.0 and tilts[14].item() == -27.71 and not tilts.isnan().any()
    last = aln.local_alignment.iloc[-1].tolist()
    assert last == [36, 15, 1483.93, 997.39, 12.57, -1.59, 1.0]
    full = aln_to_xf(
        aln.column("ROT"),
        torch.stack([aln.column("TX"), aln.column("TY")], 1),
        raw_indices=aln.raw_indices(),
        n_raw=aln.RawSize[2],
    )
    identity = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert full.shape == (51, 6) and torch.equal(full[:14], identity.repeat(14, 1))


def test_truncated_fixture_is_rejected_strictly_and_read_permissively(aln_dir):
    path = aln_dir / "cryoet-alignment_test.aln"
    with pytest.raises(AlnFormatError, match="4 global rows \\+ 4 dark frames != RawSize 90"):
        read_aln(path)
    with pytest.warns(UserWarning) as caught:
        aln = read_aln(path, strict=False)
    assert len(caught) == 2  # row count and local-row count
    assert aln.RawSize == (2032, 2032, 90) and len(aln.global_alignment) == 4
    assert len(aln.DarkFrame) == 4 and len(aln.local_alignment) == 6 and aln.Thickness is None
    with pytest.raises(AlnFormatError, match="cannot place rows"):
        aln.raw_indices()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name", ["alnfile_global_no_local.aln", "alnfile_global_and_local.aln", "cryoet-alignment_test.aln"]
)
def test_aln_rewrites_byte_for_byte(aln_dir, tmp_path, name):
    aln = read_aln(aln_dir / name, strict=False)
    write_aln(tmp_path / "out.aln", aln)
    assert (tmp_path / "out.aln").read_text() == (aln_dir / name).read_text()


def test_alnfile_tlt_and_xf_companions(aln_dir):
    aln = read_aln(aln_dir / "alnfile_global_no_local.aln")
    assert torch.equal(read_tlt(aln_dir / "alnfile_global_no_local.tlt"), aln.column("TILT"))
    xf = read_xf(aln_dir / "alnfile_global_no_local.xf")
    assert xf.shape == (61, 6)
    ours = aln_to_xf(aln.column("ROT"), torch.stack([aln.column("TX"), aln.column("TY")], 1), convention="alnfile")
    assert (ours - xf).abs().max() < 5e-5  # measured 4.9e-5 (4 printed decimals); factor 1
    cryoet = read_xf(aln_dir / "cryoet-alignment_test.xf")
    assert cryoet.shape == (3, 6)
    assert read_tlt(aln_dir / "cryoet-alignment_test.rawtlt").tolist() == [-66.0, -64.5, -63.0]


def test_new_aln_round_trip_and_unknown_keys(tmp_path):
    rows = [[1, 85.1, 1.0, 3.5, -2.25, 1.0, 1.0, 1.0, 0.0, -3.0], [2, 85.1, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    table = pd.DataFrame(rows, columns=list(GLOBAL_COLUMNS))
    aln = AlnFile((512, 480, 3), 0, table, DarkFrame=[(2, 3, 3.0)], Thickness=300, extra={"Binning": "4"})
    write_aln(tmp_path / "a.aln", aln)
    back = read_aln(tmp_path / "a.aln")
    assert back.extra == {"Binning": "4"} and back.DarkFrame == [(2, 3, 3.0)]
    pd.testing.assert_frame_equal(back.global_alignment, table)
    assert back.raw_tilt_angles().tolist() == [-3.0, 0.0, 3.0]


def test_malformed_aln_lines(tmp_path):
    path = tmp_path / "bad.aln"
    path.write_text("hello\n")
    with pytest.raises(AlnFormatError, match=r"bad\.aln:1: not an AreTomo"):
        read_aln(path)
    path.write_text(
        "# AreTomo Alignment / Priims bprmMn\n# RawSize = 4 4 1\n# SEC ROT\n"
        "    1   85.0  1.0  0.0  0.0  1.0  1.0  1.0  0.0\n"
    )
    with pytest.raises(AlnFormatError, match=r"bad\.aln:4: expected 10 numbers, found 9"):
        read_aln(path)
    path.write_text("# AreTomo Alignment\n# NumPatches = 0\n")
    with pytest.raises(AlnFormatError, match="RawSize"):
        read_aln(path)
