"""CTFFIND4 text and IMOD .defocus: round trips, real files from the corpus, conventions."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest

from tiltflow.io.ctffind import (
    CtffindFile,
    CtffindRow,
    format_ctffind,
    parse_ctffind,
    read_ctffind,
    read_ctffind_avrot,
    write_ctffind,
)
from tiltflow.io.imod_defocus import (
    ANGLE_RADIANS,
    ASTIGMATISM,
    CUT_ON,
    PHASE,
    PHASE_RADIANS,
    DefocusEntry,
    DefocusFile,
    defocus_file_from_ctf,
    format_defocus,
    parse_defocus,
    read_defocus,
    write_defocus,
)

CORPUS = Path(os.environ.get("TILTFLOW_CORPUS", Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"))


def corpus_file(*parts: str) -> Path:
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"corpus file {path} not available")
    return path


# --- CTFFIND4 ------------------------------------------------------------------------------------


def _rows():
    return [
        CtffindRow(
            micrograph_number=1,
            defocus_1_a=31000.5,
            defocus_2_a=29000.25,
            azimuth_deg=-42.5,
            phase_shift_rad=0.0,
            cross_correlation=0.0123,
            fit_resolution_a=8.75,
        ),
        CtffindRow(
            micrograph_number=2,
            defocus_1_a=30500.0,
            defocus_2_a=30100.0,
            azimuth_deg=88.0,
            phase_shift_rad=1.25,
            cross_correlation=0.02,
            fit_resolution_a=9.5,
        ),
        CtffindRow(
            micrograph_number=3,
            defocus_1_a=29800.0,
            defocus_2_a=29700.0,
            azimuth_deg=3.0,
            phase_shift_rad=0.0,
            cross_correlation=0.03,
            fit_resolution_a=12.0,
        ),
    ]


def test_ctffind_round_trip_keeps_rows_and_header(tmp_path):
    data = CtffindFile(
        input_file="TS_01.st",
        pixel_size_a=1.35,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        box_size_px=512,
        min_resolution_a=30.0,
        max_resolution_a=8.0,
        min_defocus_a=5000.0,
        max_defocus_a=80000.0,
        rows=_rows(),
    )
    write_ctffind(tmp_path / "ts.txt", data)
    back = read_ctffind(tmp_path / "ts.txt")
    assert back.rows == data.rows
    assert back.model_dump(
        exclude={"rows", "version", "run_on", "number_of_micrographs", "columns"}
    ) == data.model_dump(exclude={"rows", "version", "run_on", "number_of_micrographs", "columns"})
    assert back.number_of_micrographs == 3 and back.version.startswith("tiltflow")
    assert len((tmp_path / "ts.txt").read_text().splitlines()[-1].split()) == 7


def test_ctffind_write_sorts_rows_by_tilt_angle_and_renumbers():
    data = CtffindFile(rows=_rows())
    text = format_ctffind(data, tilt_angles_deg=[30.0, -30.0, 0.0])
    rows = parse_ctffind(text).rows
    assert [r.micrograph_number for r in rows] == [1, 2, 3]
    assert [r.defocus_1_a for r in rows] == [30500.0, 29800.0, 31000.5]  # -30°, 0°, 30°
    with pytest.raises(ValueError, match="one per row"):
        format_ctffind(data, tilt_angles_deg=[0.0])


def test_ctffind_defocus_1_is_u_along_the_azimuth():
    # CTFFIND: defocus 1 along the azimuth, defocus 1 >= defocus 2 -> u, v, angle directly
    row = CtffindRow(micrograph_number=1, defocus_1_a=31000.0, defocus_2_a=29000.0, azimuth_deg=75.0)
    assert row.to_u_v_angle() == (31000.0, 29000.0, 75.0)
    # a file with defocus 1 < defocus 2 describes the same CTF with the axes swapped
    swapped = CtffindRow(micrograph_number=1, defocus_1_a=29000.0, defocus_2_a=31000.0, azimuth_deg=-15.0)
    assert swapped.to_u_v_angle() == (31000.0, 29000.0, 75.0)
    again = CtffindRow.from_u_v_angle(1, *row.to_u_v_angle())
    assert again.to_u_v_angle() == row.to_u_v_angle()


def test_ctffind_strict_and_permissive():
    text = "# Columns: ...\n1 30000 29000 10 0 0.1 8\n2 oops 29000 10 0 0.1 8\n"
    with pytest.raises(ValueError, match="line 3"):
        parse_ctffind(text)
    with pytest.warns(UserWarning, match="skipped"):
        assert len(parse_ctffind(text, strict=False).rows) == 1


def test_ctffind_corpus_cryocat_4_1_8():
    path = corpus_file("cryocat_TS_017", "017_ctffind4.txt")
    with pytest.warns(UserWarning, match="41 micrographs but the file has 60 rows"):
        data = read_ctffind(path)  # the real file's header disagrees with its rows
    assert data.version == "4.1.8" and data.input_file == "031.mrc"
    assert (data.pixel_size_a, data.voltage_kv, data.cs_mm, data.amplitude_contrast) == (1.327, 300.0, 2.7, 0.07)
    assert (data.box_size_px, data.min_resolution_a, data.max_resolution_a) == (512, 30.0, 5.0)
    assert (data.min_defocus_a, data.max_defocus_a) == (10000.0, 75000.0)  # labelled "um", written in Å
    assert len(data.rows) == 60 and data.rows[-1].micrograph_number == 60
    first = data.rows[0]
    assert (first.defocus_1_a, first.defocus_2_a, first.azimuth_deg) == (14477.870117, 13500.001953, 75.000012)
    assert first.fit_resolution_a == 12.144508 and first.extra == []
    assert all(r.defocus_1_a >= r.defocus_2_a for r in data.rows)  # CTFFIND's convention: u = defocus 1
    assert all(-90.0 <= r.azimuth_deg <= 90.0 for r in data.rows)
    again = parse_ctffind(format_ctffind(data))
    assert again.rows == data.rows and again.pixel_size_a == 1.327


def test_ctffind_corpus_eight_column_variant_and_aretomo():
    data = read_ctffind(corpus_file("ctf", "portal-backend_TS_run1_ctffind4_EXCERPT.txt"))
    assert [r.extra for r in data.rows] == [[1.0], [1.0], [1.0]]  # #8 - dfHand
    assert data.rows[2].defocus_1_a == 71568.57 and data.pixel_size_a is None
    again = parse_ctffind(format_ctffind(data))
    assert again.rows == data.rows and "dfHand" in again.columns
    aretomo = read_ctffind(corpus_file("aretomo", "cryoet-alignment_test_CTF.txt"))
    assert len(aretomo.rows) == 3 and aretomo.rows[0].cross_correlation == -0.0105


def test_ctffind_corpus_rotational_average():
    path = corpus_file("ctf", "ctffind5_manuscript_mmm_CTF_0_avrot.txt")
    with pytest.raises(ValueError, match="read_ctffind_avrot"):
        read_ctffind(path)
    avrot = read_ctffind_avrot(path)
    assert avrot.header.pixel_size_a == 40.0 and avrot.header.header_extra == {"num. frames averaged": "3"}
    assert len(avrot.spatial_frequency_per_a) == 1 and len(avrot.ctf_fit[0]) == 363
    k = avrot.spatial_frequency_per_a[0]
    assert k[0] == 0.0 and all(b > a for a, b in itertools.pairwise(k))
    assert avrot.ctf_fit[0][0] == pytest.approx(0.07)  # the fit curve is |ctf|: A = 0.07 at k = 0


# --- IMOD .defocus ---------------------------------------------------------------------------------


def test_imod_defocus_corpus_version_2_matches_the_defocus_list():
    data = read_defocus(corpus_file("imod", "pytom-match-pick", "test_imod.defocus"))
    listed = [float(x) for x in corpus_file("imod", "pytom-match-pick", "test_defocus.txt").read_text().split()]
    assert data.version == 2 and data.flags == 0 and len(data.entries) == 35
    first = data.entries[0]
    assert (first.start_view, first.end_view, first.start_tilt_deg, first.defocus_1_nm) == (1, 1, -50.99, 3083.0)
    assert [e.defocus_1_nm for e in data.entries] == listed  # the same series in two formats (nm)
    assert first.to_u_v_angle() == (30830.0, 30830.0, 0.0)
    assert parse_defocus(format_defocus(data)) == data


def test_imod_defocus_corpus_version_3_astigmatic_round_trips_byte_for_byte():
    path = corpus_file("imod", "pytom_testData", "defocusValuesGijs.defocus")
    data = read_defocus(path)
    assert data.version == 3 and data.flags == ASTIGMATISM and len(data.entries) == 59
    first = data.entries[0]
    assert (first.defocus_1_nm, first.defocus_2_nm, first.astigmatism_angle_deg) == (3083.7, 2836.8, -15.33)
    u, v, ang = first.to_u_v_angle()
    assert (u, v) == (30837.0, 28368.0) and ang == pytest.approx(-15.33)
    assert format_defocus(data) == path.read_text()


@pytest.mark.parametrize(
    "flags", [ASTIGMATISM, ASTIGMATISM | ANGLE_RADIANS | PHASE | PHASE_RADIANS, PHASE, ASTIGMATISM | PHASE | CUT_ON]
)
def test_imod_defocus_version_3_flags_round_trip(tmp_path, flags):
    entry = DefocusEntry(
        start_view=1,
        end_view=3,
        start_tilt_deg=-3.0,
        end_tilt_deg=3.0,
        defocus_1_nm=3100.0,
        defocus_2_nm=2900.0 if flags & ASTIGMATISM else None,
        astigmatism_angle_deg=25.0 if flags & ASTIGMATISM else None,
        phase_shift_deg=60.0 if flags & PHASE else None,
        cut_on_frequency_per_nm=0.02 if flags & CUT_ON else None,
    )
    data = DefocusFile(version=3, flags=flags, entries=[entry])
    write_defocus(tmp_path / "a.defocus", data)
    back = read_defocus(tmp_path / "a.defocus")
    assert back.flags == flags and back.entries[0].start_view == 1 and back.entries[0].end_view == 3
    for name in ("defocus_1_nm", "defocus_2_nm", "astigmatism_angle_deg", "phase_shift_deg", "cut_on_frequency_per_nm"):
        want, got = getattr(entry, name), getattr(back.entries[0], name)
        assert (want is None and got is None) or got == pytest.approx(want, abs=1e-3)
    columns = (tmp_path / "a.defocus").read_text().splitlines()[1].split()
    assert len(columns) == 5 + 2 * bool(flags & ASTIGMATISM) + bool(flags & PHASE) + bool(flags & CUT_ON)
    if flags & ANGLE_RADIANS:
        assert float(columns[6]) == pytest.approx(math.radians(25.0), abs=1e-5)


def test_imod_defocus_version_1_and_errors():
    data = parse_defocus("1 1 -60.0 -60.0 3000\n2 2 -57.0 -57.0 3010\n")
    assert data.version == 1 and [e.defocus_1_nm for e in data.entries] == [3000.0, 3010.0]
    with pytest.raises(ValueError, match="neither version"):
        parse_defocus("1 2 3\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_defocus("1 0 0.0 0.0 0.0 3\n1 1 -60.0 -60.0 3000\n")  # flag 1 needs 7 columns
    with pytest.raises(ValueError, match="version 3"):
        format_defocus(
            DefocusFile(
                version=2,
                entries=[
                    DefocusEntry(
                        start_view=1,
                        end_view=1,
                        start_tilt_deg=0.0,
                        end_tilt_deg=0.0,
                        defocus_1_nm=3000.0,
                        defocus_2_nm=2900.0,
                    )
                ],
            )
        )


def test_ctffind_to_imod_and_back_keeps_u_v_angle(tmp_path):
    rows = _rows()
    angles = [-30.0, 0.0, 30.0]
    u, v, ang = zip(*(r.to_u_v_angle() for r in rows), strict=False)
    data = defocus_file_from_ctf(angles, list(u), list(v), list(ang), [r.phase_shift_rad for r in rows])
    assert data.flags == ASTIGMATISM | PHASE
    write_defocus(tmp_path / "ts.defocus", data)
    back = read_defocus(tmp_path / "ts.defocus")
    for row, entry, tilt in zip(rows, back.entries, angles, strict=False):
        assert entry.start_tilt_deg == tilt
        assert entry.to_u_v_angle() == pytest.approx(row.to_u_v_angle(), abs=0.51)  # the file keeps 0.1 nm, 0.01°
        assert math.radians(entry.phase_shift_deg) == pytest.approx(row.phase_shift_rad, abs=1e-3)
