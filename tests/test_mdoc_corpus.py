"""The mdoc reader on real SerialEM files of ../shared/corpus (one test per file; numbers read off
the files by hand). Skipped when the corpus is absent."""

from __future__ import annotations

import datetime as dt
import os
import statistics
from pathlib import Path

import pytest

from tiltflow.io.mdoc import (
    MdocError,
    NotATiltSeriesError,
    group_mdocs,
    read_frame_set_mdocs,
    read_mdocs,
    read_tilt_series_mdoc,
)
from tiltflow.io.mdoc_resolve import angle_difference_deg, axis_from_titles, number, read_raw

CORPUS = Path(os.environ.get("TILTFLOW_CORPUS", Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"))
MDOC = CORPUS / "mdoc"
FRAMES_019 = MDOC / "cryocat_TS_019_frame_mdocs"
TS_017 = CORPUS / "cryocat_TS_017" / "017.mdoc"
ETSPY = CORPUS / "images" / "etspy_serialem_NIST_Titan" / "test_000.mrc.mdoc"

pytestmark = pytest.mark.skipif(not MDOC.is_dir(), reason=f"mdoc corpus not found at {MDOC}")


def by_order(ts):
    return sorted(ts.tilts, key=lambda t: t.acquisition_order)


def by_section(ts):
    return sorted(ts.tilts, key=lambda t: (str(t.source), t.line))


def test_empiar_10164_ts01_no_voltage_no_dose_dose_symmetric():
    ts = read_tilt_series_mdoc(MDOC / "mdocfile_EMPIAR-10164_TS_01.mrc.mdoc")
    assert len(ts.tilts) == 41 and ts.flavour == "serialem"
    assert ts.tilts[0].tilt_angle_deg == pytest.approx(-59.9986)
    assert ts.tilts[-1].tilt_angle_deg == pytest.approx(60.0006)
    assert ts.voltage_kv is None and ts.pixel_size_a == 5.4 and ts.magnification == 105000
    assert ts.tilt_axis_deg == pytest.approx(85.3) and ts.image_size == (924, 958)
    # ExposureDose = 0 and nothing else: doses unknown, the user is told to give them
    assert all(t.dose_e_a2 is None and t.accumulated_dose_e_a2 is None for t in ts.tilts)
    assert any("--dose" in w for w in ts.warnings)
    # dose-symmetric: 0, +3, -3, -6, +6, +9, ... ; ZValues are in acquisition order here
    assert [round(t.tilt_angle_deg) for t in by_order(ts)][:6] == [0, 3, -3, -6, 6, 9]
    assert [t.acquisition_order for t in by_section(ts)] == list(range(1, 42))
    first = by_order(ts)[0]
    assert first.datetime == dt.datetime(2015, 11, 30, 15, 21, 38)  # 2-digit year
    assert first.movie_name == "TS_01_000_0.0.mrc" and first.num_frames == 8  # D:\DATA\...\
    ts = read_tilt_series_mdoc(MDOC / "mdocfile_EMPIAR-10164_TS_01.mrc.mdoc", dose_per_tilt_e_a2=3.0)
    assert max(t.accumulated_dose_e_a2 for t in ts.tilts) == pytest.approx(123.0)
    assert by_order(ts)[-1].tilt_angle_deg == pytest.approx(60.0006)


def test_aretomo3_ts_dose_from_dose_rate_exposure_time_and_pixel_size():
    ts = read_tilt_series_mdoc(MDOC / "aretomo3__L1_ts_001.mrc.mdoc")
    assert len(ts.tilts) == 41 and ts.voltage_kv == 300 and ts.pixel_size_a == 2.663
    assert ts.tilts[0].tilt_angle_deg == pytest.approx(-60.0006)
    assert ts.tilts[-1].tilt_angle_deg == pytest.approx(59.9926)
    assert ts.tilt_axis_deg == pytest.approx(94.0) and ts.image_size == (5760, 4092)
    zero = by_section(ts)[0]  # ZValue 0: DoseRate 11.2815, ExposureTime 0.988016
    assert zero.acquisition_order == 1 and zero.tilt_angle_deg == pytest.approx(-0.00949884)
    assert zero.dose_e_a2 == pytest.approx(11.2815 * 0.988016 / 2.663**2) == pytest.approx(1.5718, abs=1e-4)
    assert zero.datetime == dt.datetime(2023, 8, 11, 17, 44, 56)  # 4-digit year
    assert zero.movie_name == "amelo_20230811_33kx_hydraliftout_0001_-0.0.tif"  # Z:\krios2\...
    assert zero.num_frames == 14
    # DoseRate is counted through the lamella: 0.17 (39-42°) .. 2.73 e/Å² (60°), 54.3 in all
    doses = [t.dose_e_a2 for t in ts.tilts]
    assert 0.16 < min(doses) < 0.18 and 2.7 < max(doses) < 2.75
    assert sum(doses) == pytest.approx(54.31, abs=0.01)
    assert max(t.accumulated_dose_e_a2 for t in ts.tilts) == pytest.approx(sum(doses))
    assert any("DoseRate" in w and "--dose" in w for w in ts.warnings)
    assert [round(t.tilt_angle_deg) for t in by_order(ts)][:5] == [0, 3, 6, -3, -6]


def test_aretomo3_target_image_is_not_a_tilt_series():
    with pytest.raises(NotATiltSeriesError, match=r"line 12: holds a single image \(ZValue = 0"):
        read_tilt_series_mdoc(MDOC / "aretomo3__L1_tgt_001.mrc.mdoc")


def test_frame_set_single_is_one_movie_of_a_series_not_a_series():
    path = MDOC / "mdocfile__frame_set_single.mdoc"
    assert group_mdocs([path]) == {"mdocfile__frame_set_single": [path]}
    with pytest.raises(NotATiltSeriesError, match="only per-movie"):
        read_frame_set_mdocs([path])
    with pytest.raises(NotATiltSeriesError, match="only per-movie"):
        read_tilt_series_mdoc(path)


def test_frame_set_multiple_frame_based_tilt_series_is_refused():
    with pytest.raises(MdocError, match="frame-based tilt series .*20 tilts in one movie") as exc:
        read_tilt_series_mdoc(MDOC / "mdocfile__frame_set_multiple.mdoc")
    assert not isinstance(exc.value, NotATiltSeriesError)


@pytest.mark.parametrize(
    "name, what",
    [
        ("mdocfile__montage_section.mdoc", "is a grid map"),  # 135x, [MontSection], Montage = 1
        ("mdocfile__montage_section_multiple.mdoc", "is a montage"),  # 2250x, 10 [MontSection]
        ("pyserialem__gm.mrc.mdoc", "is a grid map"),  # 100x
    ],
)
def test_montages_and_grid_maps_are_rejected(name, what):
    with pytest.raises(
        NotATiltSeriesError,
        match=f"{what}.*, not a tilt series — select only tilt-series mdocs with --pattern",
    ):
        read_tilt_series_mdoc(MDOC / name)


def test_czportal_sparse_sections_keep_what_is_known():
    ts = read_tilt_series_mdoc(MDOC / "czportal__foo-TS_run1.mdoc")
    assert [t.tilt_angle_deg for t in ts.tilts] == [-4.38, -1.98, -0.00499939, 2.013, 4.28]
    assert (ts.voltage_kv, ts.pixel_size_a, ts.magnification) == (300, 3.3702, 42000)
    assert ts.tilt_axis_deg == pytest.approx(84.7) and ts.image_size == (3708, 3838)
    # only ZValue 0 has a DateTime: section order is the acquisition order
    assert [t.acquisition_order for t in ts.tilts] == [4, 3, 1, 2, 5]
    assert [t.movie_name for t in ts.tilts] == [f"TS_run1_{k}.tiff" for k in (4, 3, 1, 2, 5)]
    # only ZValue 0 has a dose (ExposureDose 2.35936; DividedBy2 = 1 does not change it)
    assert [t.dose_e_a2 for t in ts.tilts] == [None, None, 2.35936, None, None]
    assert all(t.prior_dose_e_a2 is None for t in ts.tilts)
    assert any("no dose for 4 of 5" in w for w in ts.warnings)
    ts = read_tilt_series_mdoc(MDOC / "czportal__foo-TS_run1.mdoc", dose_per_tilt_e_a2=2.5)
    assert [t.prior_dose_e_a2 for t in ts.tilts] == [7.5, 5.0, 0.0, 2.5, 10.0]


def test_czportal_near_duplicate_angles_name_both_pairs():
    path = MDOC / "czportal__close-TS_run1.mdoc"
    with pytest.raises(MdocError) as exc:
        read_tilt_series_mdoc(path)
    msg = str(exc.value)
    assert "[ZValue = 5] (line 58, -6.016°) and [ZValue = 6] (line 63, -5.9944°)" in msg
    assert "[ZValue = 7] (line 68, 6.0833°) and [ZValue = 8] (line 73, 6.09°)" in msg
    assert msg.startswith(str(path)) and "\n" not in msg


def test_cryocat_ts019_61_frame_mdocs_merge_into_one_series():
    files = sorted(FRAMES_019.glob("*.mdoc"))
    assert len(files) == 61
    assert group_mdocs(files) == {"TS_019": files}
    ts = read_frame_set_mdocs(files)
    assert ts.ts_id == "TS_019" and len(ts.tilts) == 61 and len(ts.paths) == 61
    assert ts.tilts[0].tilt_angle_deg == pytest.approx(-52.0059)
    assert ts.tilts[-1].tilt_angle_deg == pytest.approx(67.9889)
    assert (ts.voltage_kv, ts.pixel_size_a, ts.magnification) == (300, 1.971, 64000)
    assert ts.tilt_axis_deg == pytest.approx(82.9)  # RotationAngle 172.9 - 90 (no axis title)
    # DateTime order (crossing midnight 06->07 Jun 2023) is the file index order 0000..0060
    ordered = by_order(ts)
    assert [t.source.name[7:11] for t in ordered] == [f"{k:04d}" for k in range(61)]
    assert ordered[-1].datetime == dt.datetime(2023, 6, 7, 0, 17, 28)
    assert all(t.dose_e_a2 == pytest.approx(2.23843) for t in ts.tilts)
    # our prior doses match SerialEM's PriorRecordDose less its initial 0.0728 e/Å²
    err = [abs(t.prior_dose_e_a2 - (float(t.extra["PriorRecordDose"]) - 0.0728312)) for t in ts.tilts]
    assert max(err) < 0.001
    assert ordered[0].movie_name == "TS_019_0000_8.0.mrc" and ordered[0].num_frames == 10
    assert [s.ts_id for s in read_mdocs(files)] == ["TS_019"]


def test_cryocat_ts017_stack_in_angle_order_acquired_dose_symmetric():
    ts = read_tilt_series_mdoc(TS_017, initial_dose_e_a2=0.0728312)
    assert len(ts.tilts) == 60 and ts.tilt_axis_deg == pytest.approx(82.9)
    assert ts.tilts[0].tilt_angle_deg == pytest.approx(-52.0064)
    assert ts.tilts[-1].tilt_angle_deg == pytest.approx(65.9732)
    tlt = [float(v) for v in (TS_017.parent / "017.tlt").read_text().split()]
    assert [t.tilt_angle_deg for t in ts.tilts] == pytest.approx(tlt, abs=0.01)
    # ZValue 0 (-52°) was acquired last, 7.977° first
    assert by_section(ts)[0].acquisition_order == 60
    assert by_order(ts)[0].tilt_angle_deg == pytest.approx(7.97729)
    # PriorRecordDose agrees with the summed ExposureDose for the first 58 images acquired; the
    # last two (-50°, -52°) follow an image deleted from the mdoc (PriorRecordDose 129.9): warned
    gaps = [float(t.extra["PriorRecordDose"]) - t.prior_dose_e_a2 for t in by_order(ts)]
    assert max(abs(g) for g in gaps[:58]) < 0.01 and gaps[58:] == pytest.approx([2.23843] * 2, abs=0.01)
    assert any("PriorRecordDose differs" in w and "ZValue = 1 " in w for w in ts.warnings)
    # the corrected accumulated dose cryoCAT wrote (in ZValue order) = PriorRecordDose + 2.238
    corrected = [float(v) for v in (TS_017.parent / "017_corrected_dose.txt").read_text().split()]
    acc = [t.accumulated_dose_e_a2 for t in by_section(ts)]
    assert [c - a for c, a in zip(corrected, acc, strict=False)][2:] == pytest.approx([0.0] * 58, abs=0.01)


def test_etspy_stem_two_images_at_the_same_angle_are_refused():
    if not ETSPY.is_file():
        pytest.skip("etspy corpus file absent")
    with pytest.raises(
        MdocError,
        match=r"\[ZValue = 0\] \(line 12, -0.000488°\) and "
        r"\[ZValue = 1\] \(line 37, -0.000488°\)",
    ):
        read_tilt_series_mdoc(ETSPY)


def test_read_mdocs_on_the_whole_folder_lists_every_bad_file_once():
    files = sorted(MDOC.glob("*.mdoc"))
    with pytest.raises(MdocError) as exc:
        read_mdocs(files)
    bad = {line.split(":")[0].split("/")[-1] for line in str(exc.value).splitlines()}
    assert bad == {
        "aretomo3__L1_tgt_001.mrc.mdoc",
        "czportal__close-TS_run1.mdoc",
        "mdocfile__frame_set_multiple.mdoc",
        "mdocfile__frame_set_single.mdoc",
        "mdocfile__montage_section.mdoc",
        "mdocfile__montage_section_multiple.mdoc",
        "pyserialem__gm.mrc.mdoc",
    }
    assert len(str(exc.value).splitlines()) == 7
    good = [
        f
        for f in files
        if f.name.split(".")[0] in ("aretomo3__L1_ts_001", "czportal__foo-TS_run1", "mdocfile_EMPIAR-10164_TS_01")
    ]
    assert [len(s.tilts) for s in read_mdocs(good)] == [41, 5, 41]


def test_serialem_title_axis_equals_rotation_angle_minus_90_on_every_corpus_file():
    """Grounds the fallback used for per-movie mdocs that carry no 'Tilt axis angle' title."""
    files = [*MDOC.glob("*.mdoc"), TS_017] + ([ETSPY] if ETSPY.is_file() else [])
    checked = 0
    for path in files:
        raw = read_raw(path)
        axis, form = axis_from_titles(raw.titles)
        rotations = [r for s in raw.sections if (r := number(raw, s, "RotationAngle", header=False)) is not None]
        if axis is None or not rotations:
            continue
        assert form == "serialem"
        assert angle_difference_deg(axis, statistics.median(rotations) - 90.0) < 0.1, path.name
        checked += 1
    assert checked == (10 if ETSPY.is_file() else 9)
