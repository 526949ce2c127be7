"""The mdoc reader on synthetic SerialEM and Tomo5 mdocs written in tmp_path (one test per rule)."""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiltflow.io.mdoc import (
    MdocError,
    NotATiltSeriesError,
    group_mdocs,
    read_frame_set_mdocs,
    read_mdocs,
    read_tilt_series_mdoc,
    ts_id_from_path,
)
from tiltflow.io.mdoc_resolve import parse_datetime, parse_datetimes

# dose-symmetric acquisition: 0, +3, -3, +6, -6 (the stack's ZValues are in tilt-angle order)
DOSE_SYMMETRIC = [0.0, 3.0, -3.0, 6.0, -6.0]


def serialem_text(
    sections: list[dict[str, str]],
    *,
    header: dict[str, str] | None = None,
    title_axis: str | None = "85.3",
    kind: str = "ZValue",
    newline: str = "\n",
) -> str:
    head = (
        {
            "PixelSpacing": "2.5",
            "Voltage": "300",
            "ImageFile": "TS_01.mrc",
            "ImageSize": "512 480",
            "DataMode": "1",
        }
        if header is None
        else header
    )
    lines = [f"{k} = {v}" for k, v in head.items()] + [
        "",
        "[T = SerialEM: Digitized on EMBL Krios                       30-Nov-15  15:14:20    ]",
        "",
    ]
    if title_axis is not None:
        lines += [
            f"[T =     Tilt axis angle = {title_axis}, binning = 1  spot = 8  camera = 2]",
            "",
        ]
    for z, sec in enumerate(sections):
        lines += [f"[{kind} = {z}]"] + [f"{k} = {v}" for k, v in sec.items()] + [""]
    return newline.join(lines) + newline


def serialem_sections(angles: list[float], order: list[int], **common: str) -> list[dict[str, str]]:
    """Sections in the given angle order; ``order[i]`` is the acquisition index (0-based)."""
    start = dt.datetime(2015, 11, 30, 15, 21, 38)
    return [
        {
            "TiltAngle": f"{a:g}",
            "Magnification": "105000",
            "PixelSpacing": "2.5",
            "Binning": "1",
            "DividedBy2": "1",
            "ExposureTime": "0.8",
            "SubFramePath": f"D:\\DATA\\Flo\\frames\\TS_01_{k:03d}_{a:.1f}.mrc",
            "NumSubFrames": "8",
            "DateTime": (start + dt.timedelta(seconds=61 * k)).strftime("%d-%b-%y  %H:%M:%S"),
            **common,
        }
        for a, k in zip(angles, order, strict=False)
    ]


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_serialem_dose_symmetric_order_from_datetime_and_dose_bookkeeping(tmp_path):
    angles = sorted(DOSE_SYMMETRIC)  # stack order: -6 -3 0 3 6
    order = [DOSE_SYMMETRIC.index(a) for a in angles]  # acquisition: 4 2 0 1 3
    p = write(
        tmp_path / "TS_01.mrc.mdoc",
        serialem_text(serialem_sections(angles[::-1], order[::-1], ExposureDose="3.0")),
    )  # ZValues 6 .. -6
    ts = read_tilt_series_mdoc(p, initial_dose_e_a2=1.5)
    assert ts.ts_id == "TS_01" and ts.flavour == "serialem" and ts.paths == [p]
    assert (ts.voltage_kv, ts.pixel_size_a, ts.magnification) == (300.0, 2.5, 105000.0)
    assert ts.image_size == (512, 480) and ts.tilt_axis_deg == pytest.approx(85.3)
    assert [t.tilt_angle_deg for t in ts.tilts] == angles
    assert [t.acquisition_order for t in ts.tilts] == [k + 1 for k in order]
    for t in ts.tilts:
        assert t.dose_e_a2 == pytest.approx(3.0)
        assert t.prior_dose_e_a2 == pytest.approx(1.5 + 3.0 * (t.acquisition_order - 1))
        assert t.accumulated_dose_e_a2 == pytest.approx(t.prior_dose_e_a2 + 3.0)
    zero = ts.tilts[2]
    assert zero.movie_name == "TS_01_000_0.0.mrc" and zero.movie_path is None
    assert zero.num_frames == 8 and zero.datetime == dt.datetime(2015, 11, 30, 15, 21, 38)
    assert zero.section == "ZValue = 2" and zero.source == p
    assert p.read_text().splitlines()[zero.line - 1] == "[ZValue = 2]"
    assert zero.extra["DividedBy2"] == "1" and "TiltAngle" not in zero.extra
    assert ts.warnings == []


def test_order_falls_back_to_section_order_when_one_datetime_is_missing(tmp_path):
    secs = serialem_sections([0.0, 3.0, -3.0], [2, 1, 0], ExposureDose="2")
    del secs[1]["DateTime"]
    ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs)))
    assert [(t.tilt_angle_deg, t.acquisition_order) for t in ts.tilts] == [(-3, 3), (0, 1), (3, 2)]


def test_datetime_formats_and_flavour_fallback():
    assert parse_datetime("30-Nov-15  15:21:38", year_first=False) == dt.datetime(2015, 11, 30, 15, 21, 38)
    assert parse_datetime("11-Aug-2023  17:44:56", year_first=True) == dt.datetime(2023, 8, 11, 17, 44, 56)
    assert parse_datetime("22-Feb-04  23:02:05", year_first=True) == dt.datetime(2022, 2, 4, 23, 2, 5)
    assert parse_datetime("31-Feb-15 10:00:00", year_first=False) is None
    now = dt.datetime(2024, 1, 1)
    # a SerialEM file read as Tomo5: 30-Nov-15 would be 2030 (future) -> day-first reading is used
    dates, note = parse_datetimes(["30-Nov-15  15:21:38", "30-Nov-15  15:22:37"], tomo5=True, now=now)
    assert dates[0] == dt.datetime(2015, 11, 30, 15, 21, 38) and "SerialEM" in note
    # a Tomo5 file read as SerialEM: 22-Feb-28 would be 22 Feb 2028 (future) -> year first
    dates, note = parse_datetimes(["22-Feb-28  23:02:05"], tomo5=False, now=now)
    assert dates == [dt.datetime(2022, 2, 28, 23, 2, 5)] and "Tomo5" in note
    dates, note = parse_datetimes(["yesterday", "30-Nov-15  15:21:38"], tomo5=False, now=now)
    assert dates == [None, None] and "not understood" in note


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"ExposureDose": "2.23843", "FrameDosesAndNumber": "0.5 10"}, 2.23843),
        (
            {"ExposureDose": "0", "FrameDosesAndNumber": "0.023687 3  0.035531 7"},
            0.023687 * 3 + 0.035531 * 7,
        ),
        ({"FrameDosesAndNumber": "2.07 1"}, 2.07),
        # aretomo3-like K3: 11.2815 e/px/s * 0.988016 s / (2.663 Å)^2
        (
            {
                "ExposureDose": "0",
                "FrameDosesAndNumber": "0 14",
                "DoseRate": "11.2815",
                "ExposureTime": "0.988016",
                "PixelSpacing": "2.663",
                "Binning": "1",
            },
            11.2815 * 0.988016 / 2.663**2,
        ),
        # super-resolution: Binning 0.5, PixelSpacing 1.2827 -> unbinned 2.5654 Å
        (
            {"DoseRate": "5", "ExposureTime": "1", "PixelSpacing": "1.2827", "Binning": "0.5"},
            5 / 2.5654**2,
        ),
        ({"ExposureDose": "3", "DividedBy2": "1"}, 3.0),
    ],
)
def test_dose_of_each_image_from_the_first_source_that_gives_one(tmp_path, keys, expected):
    secs = serialem_sections([-3.0, 0.0, 3.0], [2, 0, 1], **keys)
    ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs)))
    assert [t.dose_e_a2 for t in ts.tilts] == pytest.approx([expected] * 3, rel=1e-9)
    assert sorted(t.accumulated_dose_e_a2 for t in ts.tilts) == pytest.approx(
        [expected, 2 * expected, 3 * expected], rel=1e-9
    )


def test_dose_from_prior_record_dose_differences_in_acquisition_order(tmp_path):
    angles, order = [-6.0, -3.0, 0.0, 3.0, 6.0], [4, 2, 0, 1, 3]
    prior_by_order = [0.0, 2.0, 4.5, 7.0, 9.5]  # steps 2.0 2.5 2.5 2.5 (+ median 2.5)
    secs = serialem_sections(angles, order, ExposureDose="0")
    for sec, k in zip(secs, order, strict=False):
        sec["PriorRecordDose"] = f"{prior_by_order[k]}"
    ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs)))
    by_order = sorted(ts.tilts, key=lambda t: t.acquisition_order)
    assert [t.dose_e_a2 for t in by_order] == pytest.approx([2.0, 2.5, 2.5, 2.5, 2.5])
    assert [t.prior_dose_e_a2 for t in by_order] == pytest.approx(prior_by_order)
    assert any("median" in w for w in ts.warnings)


def test_prior_record_dose_gap_warns_that_an_image_was_deleted(tmp_path):
    angles, order = [-6.0, -3.0, 0.0, 3.0, 6.0], [4, 2, 0, 1, 3]
    secs = serialem_sections(angles, order, ExposureDose="2")
    for sec, k in zip(secs, order, strict=False):
        sec["PriorRecordDose"] = f"{0.1 + 2.0 * k}"
    p = write(tmp_path / "a.mdoc", serialem_text(secs))
    assert read_tilt_series_mdoc(p, initial_dose_e_a2=0.1).warnings == []
    del secs[1]  # -3°, acquired third, deleted
    ts = read_tilt_series_mdoc(write(p, serialem_text(secs)), initial_dose_e_a2=0.1)
    assert [t.prior_dose_e_a2 for t in by_angle(ts)] == pytest.approx([6.1, 0.1, 2.1, 4.1])
    assert [w for w in ts.warnings if "PriorRecordDose differs" in w] == [
        "PriorRecordDose differs from the summed doses by +2 e/Å² from ZValue = 3 on (acquisition "
        "order) — an image missing from the mdoc? Prior doses here count only the images listed"
    ]


def test_dose_rate_doses_that_vary_a_lot_are_flagged(tmp_path):
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], DoseRate="10", ExposureTime="1", PixelSpacing="2")
    secs[2]["DoseRate"] = "2"  # thick region: few counts
    ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs)))
    assert [t.dose_e_a2 for t in ts.tilts] == pytest.approx([2.5, 2.5, 0.5])
    assert any("vary from 0.5 to 2.5" in w for w in ts.warnings)


def by_angle(ts):
    return sorted(ts.tilts, key=lambda t: t.tilt_angle_deg)


def test_user_dose_wins_and_missing_dose_is_none(tmp_path):
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], ExposureDose="0")
    p = write(tmp_path / "a.mdoc", serialem_text(secs))
    ts = read_tilt_series_mdoc(p)
    assert all(t.dose_e_a2 is None and t.prior_dose_e_a2 is None for t in ts.tilts)
    assert any("--dose" in w for w in ts.warnings)
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], ExposureDose="9")
    ts = read_tilt_series_mdoc(write(p, serialem_text(secs)), dose_per_tilt_e_a2=2.0, initial_dose_e_a2=0.5)
    assert [(t.dose_e_a2, t.prior_dose_e_a2, t.accumulated_dose_e_a2) for t in ts.tilts] == [
        (2.0, 2.5, 4.5),
        (2.0, 0.5, 2.5),
        (2.0, 4.5, 6.5),
    ]
    with pytest.raises(ValueError, match="dose_per_tilt_e_a2"):
        read_tilt_series_mdoc(p, dose_per_tilt_e_a2=-1.0)


def test_serialem_axis_from_rotation_angle_when_no_title(tmp_path):
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], RotationAngle="-176")
    ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs, title_axis=None)))
    assert ts.tilt_axis_deg == pytest.approx(94.0)  # -176 - 90 = -266 -> 94
    assert any("RotationAngle - 90" in w for w in ts.warnings)


# --- Tomo5 -------------------------------------------------------------------------------------
def tomo5_text(
    angles: list[float],
    order: list[int],
    *,
    axis_header: str | None = "-174.23",
    rotation: str = "-84.23",
    newline: str = "\r\n",
    dates: bool = True,
    names: list[str] | None = None,
) -> str:
    lines = [
        "PixelSpacing = 1.6",
        "ImageFile = Position_1.mrc",
        "ImageSize = 4096 4096",
        "",
        "[T = Tomography: tomo5-host  22-Feb-04  23:02:05]",
        "",
    ]
    if axis_header is not None:
        lines += [f"[T =   TiltAxisAngle = {axis_header}  Binning = 1  SpotSize = 7]", ""]
    start = dt.datetime(2022, 2, 4, 23, 2, 5)
    for z, (a, k) in enumerate(zip(angles, order, strict=False)):
        name = names[z] if names else f"Position_1_{k + 1:03d}_{a:.2f}_20220204_{230205 + k}_EER.eer"
        sec = {
            "TiltAngle": f"{a + 0.013:.3f}",
            "Voltage": "300",
            "Magnification": "81000",
            "ExposureDose": "",
            "PriorRecordDose": f"{2.07 * k:.2f}",
            "RotationAngle": rotation,
            "NumSubFrames": "1",
            "FrameDosesAndNumber": "2.07 1",
            "ChannelName": "",
            "CameraLength": "NaN",
            "SubFramePath": f"D:\\Tomo5\\Position_1\\{name}",
        }
        if dates:
            sec["DateTime"] = (start + dt.timedelta(minutes=k)).strftime("%y-%b-%d  %H:%M:%S")
        lines += [f"[ZValue = {z}]"] + [f"{k_} = {v}" for k_, v in sec.items()] + [""]
    return newline.join(lines) + newline


@pytest.mark.parametrize(
    "header, rotation, expected, warns",
    [
        ("-174.23", "-84.23", 84.23, False),  # -(-174.23) - 90 = 84.23 = -(-84.23)
        ("-174.23", "-80.0", 84.23, True),  # disagree by 4.23° -> header wins, warning
        (None, "-84.23", 84.23, False),  # sections only: -RotationAngle
        ("95", "-175", 175.0, False),  # -95 - 90 = -185 -> 175 in (-180, 180]
        ("-270", "180", 180.0, False),  # 270 - 90 = 180 stays 180; -180 -> 180
        ("90", "-180", 180.0, False),  # -90 - 90 = -180 -> 180
    ],
)
def test_tomo5_tilt_axis_convention(tmp_path, header, rotation, expected, warns):
    p = write(
        tmp_path / "Position_1.mdoc",
        tomo5_text([0.0, 3.0, -3.0], [0, 1, 2], axis_header=header, rotation=rotation),
    )
    ts = read_tilt_series_mdoc(p, tomo5=True)
    assert ts.flavour == "tomo5" and ts.tilt_axis_deg == pytest.approx(expected)
    assert any("disagree" in w for w in ts.warnings) == warns


def test_tomo5_file_values_dates_empty_and_nan_keys(tmp_path):
    angles, order = [-6.0, -3.0, 0.0, 3.0, 6.0], [4, 2, 0, 1, 3]
    p = write(tmp_path / "Position_1.mdoc", tomo5_text(angles, order))
    ts = read_tilt_series_mdoc(p, tomo5=True)
    assert ts.voltage_kv == 300.0 and ts.magnification == 81000.0 and ts.pixel_size_a == 1.6
    assert [t.acquisition_order for t in ts.tilts] == [k + 1 for k in order]
    t0 = ts.tilts[2]
    assert t0.datetime == dt.datetime(2022, 2, 4, 23, 2, 5)  # YY-Mon-DD
    assert t0.dose_e_a2 == pytest.approx(2.07) and t0.num_frames == 1
    assert t0.extra["ChannelName"] == "" and t0.extra["CameraLength"] == "NaN"
    assert [t.prior_dose_e_a2 for t in ts.tilts] == pytest.approx([2.07 * k for k in order])
    # without the flag the file is still recognised as Tomo5 (its titles), with a warning
    ts2 = read_tilt_series_mdoc(p)
    assert ts2.flavour == "tomo5" and ts2.tilt_axis_deg == pytest.approx(84.23)
    assert any("Tomo5" in w for w in ts2.warnings)


def test_crlf_lf_and_cr_give_the_same_series(tmp_path):
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], ExposureDose="2")
    results = []
    for nl in ("\n", "\r\n", "\r"):
        ts = read_tilt_series_mdoc(write(tmp_path / "a.mdoc", serialem_text(secs, newline=nl)))
        results.append(
            [(t.tilt_angle_deg, t.acquisition_order, t.dose_e_a2, t.line, t.movie_name) for t in ts.tilts]
            + [ts.tilt_axis_deg]
        )
    assert results[0] == results[1] == results[2]


def test_windows_sub_frame_path_resolves_next_to_mdoc_then_in_movie_dirs(tmp_path):
    movies = tmp_path / "frames"
    movies.mkdir()
    secs = serialem_sections([-3.0, 0.0, 3.0], [1, 0, 2], ExposureDose="2")
    for sec in secs:
        sec["SubFramePath"] = "Z:\\krios2\\session\\" + sec["SubFramePath"].split("\\")[-1]
    names = [s["SubFramePath"].split("\\")[-1] for s in secs]
    (movies / names[0]).touch()
    (tmp_path / names[1]).touch()
    p = write(tmp_path / "TS_01.mrc.mdoc", serialem_text(secs))
    ts = read_tilt_series_mdoc(p, movie_dirs=[movies])
    found = {t.movie_name: t.movie_path for t in ts.tilts}
    assert found == {names[0]: movies / names[0], names[1]: tmp_path / names[1], names[2]: None}
    # copied from a Windows share the file's letter case may differ from the mdoc's
    (movies / names[2].upper()).touch()
    ts = read_tilt_series_mdoc(p, movie_dirs=[movies])
    assert {t.movie_name: t.movie_path for t in ts.tilts}[names[2]] == movies / names[2].upper()


def test_tomo5_movie_name_variants_case_and_nominal_angle(tmp_path):
    angles, order = [-3.0, 0.0, 3.0], [2, 0, 1]
    names = [
        "Position_1_003_-3.00_20220204_230207_fractions.tiff",
        "Position_1_001_0.00_20220204_230205_fractions.tiff",
        "Position_1_002_5.00_20220204_230206_EER.eer",
    ]  # nominal 5 vs TiltAngle 3
    movies = tmp_path / "movies"
    movies.mkdir()
    (movies / "Position_1_003_-3.00_20220204_230207_Fractions.tiff").touch()  # case differs
    (movies / "Position_1_001_0.00_20220204_230205_fractions.tiff").touch()  # exact
    (movies / "Position_1_002_3.00_20220204_230206_EER.eer").touch()  # angle differs
    p = write(tmp_path / "Position_1.mdoc", tomo5_text(angles, order, names=names))
    ts = read_tilt_series_mdoc(p, tomo5=True, movie_dirs=[movies])
    assert [t.movie_path.name for t in ts.tilts] == [
        "Position_1_003_-3.00_20220204_230207_Fractions.tiff",
        "Position_1_001_0.00_20220204_230205_fractions.tiff",
        "Position_1_002_3.00_20220204_230206_EER.eer",
    ]
    assert [t.nominal_angle_deg for t in ts.tilts] == [None, None, 5.0]
    # two candidates for one index -> not guessed
    (movies / "Position_1_002_4.00_20220204_230206_EER.eer").touch()
    ts = read_tilt_series_mdoc(p, tomo5=True, movie_dirs=[movies])
    assert ts.tilts[2].movie_path is None and any("cannot tell" in w for w in ts.warnings)


# --- rejections and errors ----------------------------------------------------------------------
def test_absurd_rotation_angle_is_named_not_overflowed(tmp_path):
    """Two RotationAngle values near float max made the median infinite (found by hypothesis):
    now a one-line MdocError naming the file, line and section."""
    p = write(
        tmp_path / "a.mdoc",
        "\n[ZValue = 0]\nTiltAngle = 0.0\nRotationAngle = 8.98e+307\n"
        "[ZValue = 1]\nTiltAngle = 1.0\nRotationAngle = 8.98e+307\n",
    )
    with pytest.raises(MdocError) as exc:
        read_tilt_series_mdoc(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and "line 4" in msg and "RotationAngle" in msg and "\n" not in msg


def test_near_duplicate_angles_name_both_sections(tmp_path):
    secs = serialem_sections([0.0, 3.0, -3.0, 3.02], [0, 1, 2, 3], ExposureDose="2")
    p = write(tmp_path / "a.mdoc", serialem_text(secs))
    with pytest.raises(MdocError) as exc:
        read_tilt_series_mdoc(p)
    msg = str(exc.value)
    assert "[ZValue = 1]" in msg and "[ZValue = 3]" in msg and "ZValue = 0" not in msg
    assert msg.startswith(str(p)) and "\n" not in msg and " — " in msg


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty or not an mdoc"),
        ("hello world\nthis is not an mdoc\n", "empty or not an mdoc"),
        ("PixelSpacing = 5\nVoltage = 300\n", "no [ZValue] or [FrameSet]"),
        (serialem_text(serialem_sections([0.0], [0])), "single image"),
        (serialem_text(serialem_sections([0.0, 3.0], [0, 1]), header={"Montage": "1"}), "montage"),
        (serialem_text(serialem_sections([0.0, 0.0], [0, 1]), kind="MontSection"), "montage"),
    ],
)
def test_not_a_tilt_series_is_rejected_with_the_reason(tmp_path, text, reason):
    p = write(tmp_path / "x.mdoc", text)
    with pytest.raises(NotATiltSeriesError, match=re.escape(reason)):
        read_tilt_series_mdoc(p)


def test_varying_piece_coordinates_of_a_low_mag_montage_is_a_grid_map(tmp_path):
    secs = serialem_sections([0.0, 0.1], [0, 1], Magnification="135")
    secs[0]["PieceCoordinates"], secs[1]["PieceCoordinates"] = "0 0 0", "0 3400 0"
    with pytest.raises(NotATiltSeriesError, match="grid map .*--pattern"):
        read_tilt_series_mdoc(write(tmp_path / "gm.mdoc", serialem_text(secs)))


def test_binary_missing_and_malformed_files_give_one_line_errors(tmp_path):
    with pytest.raises(NotATiltSeriesError, match="binary"):
        read_tilt_series_mdoc(write(tmp_path / "a.mrc", "MAP \x00\x00\x01"))
    with pytest.raises(MdocError, match="cannot be read"):
        read_tilt_series_mdoc(tmp_path / "missing.mdoc")
    secs = serialem_sections([0.0, 3.0], [0, 1])
    secs[1]["TiltAngle"] = "abc"
    p = write(tmp_path / "bad.mdoc", serialem_text(secs))
    line = p.read_text().splitlines().index("TiltAngle = abc") + 1
    with pytest.raises(MdocError, match=rf"bad.mdoc:line {line} ZValue = 1: TiltAngle = abc is not a number"):
        read_tilt_series_mdoc(p)
    secs[1]["TiltAngle"] = "NaN"
    with pytest.raises(MdocError, match="no TiltAngle"):
        read_tilt_series_mdoc(write(p, serialem_text(secs)))


# --- per-movie mdocs, grouping, several files --------------------------------------------------
def frame_set_files(folder: Path, ts: str, angles: list[float], with_dates: bool = True) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for k, a in enumerate(angles):
        sec = serialem_sections([a], [k], ExposureDose="2.5")[0]
        sec["SubFramePath"] = f"{ts}_{k:04d}_{a:.1f}.mrc"
        if not with_dates:
            del sec["DateTime"]
        text = serialem_text(
            [sec],
            header={"T": "SerialEM: Krios  06-Jun-23  12:49:49", "Voltage": "300"},
            title_axis=None,
            kind="FrameSet",
        )
        paths.append(write(folder / f"{ts}_{k:04d}_{a:.1f}.mrc.mdoc", text))
    return paths


def test_frame_set_mdocs_merge_into_one_series(tmp_path):
    files = frame_set_files(tmp_path / "f", "TS_019", DOSE_SYMMETRIC, with_dates=False)
    ts = read_frame_set_mdocs(files[::-1])
    assert ts.ts_id == "TS_019" and len(ts.paths) == 5 and ts.voltage_kv == 300.0
    assert [t.tilt_angle_deg for t in ts.tilts] == sorted(DOSE_SYMMETRIC)
    # no DateTime: file (name) order is the acquisition order
    assert [t.acquisition_order for t in ts.tilts] == [5, 3, 1, 2, 4]
    assert [t.prior_dose_e_a2 for t in ts.tilts] == pytest.approx([10.0, 5.0, 0.0, 2.5, 7.5])
    header_line = files[0].read_text().splitlines().index("[FrameSet = 0]") + 1
    assert all(t.section == "FrameSet = 0" and t.line == header_line for t in ts.tilts)
    assert {t.source for t in ts.tilts} == set(files)


def test_frame_set_reader_refuses_other_files_and_mixed_series(tmp_path):
    a = frame_set_files(tmp_path, "TS_01", [0.0, 3.0])
    b = frame_set_files(tmp_path, "TS_02", [0.0, 3.0])
    with pytest.raises(MdocError, match=r"2 series \(TS_01, TS_02\) — group them"):
        read_frame_set_mdocs([*a, *b])
    stack = write(tmp_path / "TS_03.mrc.mdoc", serialem_text(serialem_sections([0.0, 3.0], [0, 1])))
    with pytest.raises(MdocError, match="TS_03.mrc.mdoc: is a tilt-series mdoc"):
        read_frame_set_mdocs([stack])
    mixed = stack.read_text() + "[FrameSet = 0]\nTiltAngle = 6\n"
    with pytest.raises(MdocError, match=r"mixes \[ZValue\] and \[FrameSet\]"):
        read_tilt_series_mdoc(write(tmp_path / "mixed.mdoc", mixed))


def test_group_and_read_mdocs_report_all_problems(tmp_path):
    a = frame_set_files(tmp_path, "TS_01", [0.0, 3.0, -3.0])
    b = frame_set_files(tmp_path, "TS_02", [0.0, 3.0])
    c = write(
        tmp_path / "TS_03.mrc.mdoc",
        serialem_text(serialem_sections([0.0, 3.0, -3.0], [0, 1, 2], ExposureDose="2")),
    )
    groups = group_mdocs([c, *b, *a])
    assert groups == {"TS_01": a, "TS_02": b, "TS_03": [c]}
    assert [len(s.tilts) for s in read_mdocs([c, *b, *a])] == [3, 2, 3]
    montage = write(
        tmp_path / "mm.mdoc",
        serialem_text(serialem_sections([0.0, 3.0], [0, 1]), header={"Montage": "1"}),
    )
    single = write(tmp_path / "tgt.mdoc", serialem_text(serialem_sections([0.0], [0])))
    dup = write(tmp_path / "dup.mdoc", serialem_text(serialem_sections([0.0, 0.01], [0, 1])))
    with pytest.raises(MdocError) as exc:
        read_mdocs([c, montage, single, dup, *a], dose_per_tilt_e_a2=3.0)
    lines = str(exc.value).splitlines()
    assert len(lines) == 3 and not isinstance(exc.value, NotATiltSeriesError)
    assert {ln.split(":")[0] for ln in lines} == {str(montage), str(single), str(dup)}
    with pytest.raises(NotATiltSeriesError):
        read_mdocs([montage, single])
    other = tmp_path / "other"
    other.mkdir()
    c2 = write(other / "TS_03.mrc.mdoc", c.read_text())
    with pytest.raises(MdocError, match="TS_03: .*rename"):
        group_mdocs([c, c2])


@pytest.mark.parametrize(
    "name, ts_id",
    [
        ("TS_01.mrc.mdoc", "TS_01"),
        ("TS_019_0000_8.0.mrc.mdoc", "TS_019"),
        ("TS_019_0059_-50.0.mrc.mdoc", "TS_019"),
        ("s_mmm_00993_33.0_Oct08_07.39.05.tif.mdoc", "s_mmm"),
        ("L1_ts_001.mrc.mdoc", "L1_ts_001"),
        ("Position 1 (2).mdoc", "Position_1__2_"),
        ("017.mdoc", "017"),
    ],
)
def test_ts_id_from_path(name, ts_id):
    assert ts_id_from_path(Path("/data") / name) == ts_id


# --- property test: the parser fails only with MdocError ----------------------------------------
_KEYS = [
    "TiltAngle",
    "ExposureDose",
    "DoseRate",
    "ExposureTime",
    "PixelSpacing",
    "Binning",
    "FrameDosesAndNumber",
    "PriorRecordDose",
    "DateTime",
    "SubFramePath",
    "NumSubFrames",
    "RotationAngle",
    "Montage",
    "PieceCoordinates",
    "ImageSize",
    "Voltage",
    "Magnification",
    "FrameTSStartEndFrames",
    "T",
]
_VALUES = st.one_of(
    st.text(max_size=12),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(
        [
            "",
            "NaN",
            "1e400",
            "-0",
            "0 14",
            "2.07 1",
            "1 2 3",
            "30-Nov-15  15:21:38",
            "22-Feb-31 25:61:00",
            "Z:\\a\\b.tif",
        ]
    ),
)
_LINE = st.one_of(
    st.tuples(st.sampled_from(_KEYS), _VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(
        [
            "[ZValue = 0]",
            "[ZValue = 1]",
            "[FrameSet = 0]",
            "[MontSection = 0]",
            "[T = Tilt axis angle = 1e999, binning = 1]",
            "[T = TiltAxisAngle = x]",
            "[T = TiltAxisAngle = -174.23]",
            "[",
            "]",
            "=",
        ]
    ),
    st.text(max_size=30),
)


_NUMBERS = st.one_of(
    st.floats(allow_nan=True).map(str),
    st.floats(-100, 100).map(lambda a: f"{a:g}"),
    st.sampled_from(
        [
            "",
            "NaN",
            "0",
            "0 14",
            "2.07 1",
            "30-Nov-15  15:21:38",
            "22-Feb-04 23:02:05",
            "Z:\\a\\b_001_3.0_20220204_230205_EER.eer",
        ]
    ),
)
_PLAIN_LINE = st.one_of(
    st.tuples(st.sampled_from(_KEYS[1:12]), _NUMBERS).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.text(max_size=20).filter(lambda t: "[" not in t and "\x00" not in t),
)


@st.composite
def _mdoc_texts(draw) -> list[str]:
    """Mdoc-shaped text: header lines, a title, sections that mostly carry a TiltAngle."""
    lines = draw(st.lists(_PLAIN_LINE, max_size=6))
    lines.append(
        draw(
            st.sampled_from(
                [
                    "",
                    "[T = Tilt axis angle = 85.3, binning = 1]",
                    "[T =   TiltAxisAngle = -174.23  Binning = 1]",
                    "[T = Tomography: host  22-Feb-04  23:02:05]",
                ]
            )
        )
    )
    kind = draw(st.sampled_from(["ZValue", "FrameSet"]))
    for z in range(draw(st.integers(0, 6))):
        lines.append(f"[{kind} = {z}]")
        if draw(st.integers(0, 19)) != 7:
            lines.append(f"TiltAngle = {draw(st.floats(-90, 90))}")
        lines += draw(st.lists(_PLAIN_LINE, max_size=8))
    return lines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.one_of(_mdoc_texts(), st.lists(_LINE, max_size=40)),
    nl=st.sampled_from(["\n", "\r\n", "\r"]),
    tomo5=st.booleans(),
)
def test_parser_fails_only_with_mdoc_error_on_random_text(lines, nl, tomo5):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.mdoc"
        p.write_bytes(nl.join(lines).encode("utf-8", "surrogatepass"))
        try:
            ts = read_tilt_series_mdoc(p, tomo5=tomo5)
        except MdocError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(p))
        else:
            assert len(ts.tilts) >= 2
            assert [t.tilt_angle_deg for t in ts.tilts] == sorted(t.tilt_angle_deg for t in ts.tilts)
            assert sorted(t.acquisition_order for t in ts.tilts) == list(range(1, len(ts.tilts) + 1))
