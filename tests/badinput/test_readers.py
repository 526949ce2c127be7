"""Bad input files (issue 13 rows 4, 6, 7, 14, 16): refused at import with exit code 2 and one line
naming the file (and line and key) and the fix; the project unchanged. Readers agree with each other."""

from __future__ import annotations

import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile

from tiltflow.io.movies import read_movie_frames, read_movie_header
from tiltflow.workflow.store import ProjectStore

from ._cli import assert_refused, invoke, project_state, write_stack


def _first_movie(data: Path) -> Path:
    return sorted((data / "frames").glob("TS_01_*"))[0]


def _edit_first(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# (mdoc edit: old, new; words of the one line) — row 7: plausible ranges, with file, line and key
MDOC_CASES = [
    ("PixelSpacing = 2.76", "PixelSpacing = 1e300", ["TS_01.mdoc:line 1", "PixelSpacing = 1e300", "--pixel-size"]),
    ("Voltage = 300.0", "Voltage = -300", ["TS_01.mdoc:line 2", "Voltage = -300", "--voltage"]),
    ("ExposureDose = 3.0", "ExposureDose = -3", ["TS_01.mdoc:line", "ZValue = 0", "ExposureDose = -3"]),
    ("Magnification = 32000", "Magnification = -5", ["TS_01.mdoc:line", "Magnification = -5"]),
    ("Binning = 1", "Binning = 1000", ["TS_01.mdoc:line", "Binning = 1000"]),
    ("PriorRecordDose = 0.0", "PriorRecordDose = -1", ["TS_01.mdoc:line", "PriorRecordDose = -1"]),
    ("TiltAngle = 0.00046", "TiltAngle = 95", ["TS_01.mdoc:line", "TiltAngle = 95"]),
]


@pytest.mark.parametrize("old,new,needles", MDOC_CASES, ids=[c[1] for c in MDOC_CASES])
def test_an_implausible_mdoc_value_is_refused_with_file_line_and_key(project, data, old, new, needles):
    _edit_first(data / "TS_01.mdoc", old, new)
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", data])
    assert_refused(result, needles, project, before)


def _zeros(data: Path) -> Path:
    path = data / "zero.gain"
    tifffile.imwrite(path, np.zeros((96, 128), np.float32))
    return path


def _small(data: Path) -> Path:
    path = data / "dark.tif"
    tifffile.imwrite(path, np.zeros((50, 50), np.float32))
    return path


def _nan_gain(data: Path) -> Path:
    path = data / "nan.gain"
    tifffile.imwrite(path, np.full((96, 128), np.nan, np.float32))
    return path


# (option, how the file is made, words) — rows 4 and 6
REFERENCE_CASES = [
    ("--gain", _zeros, ["zero.gain", "no positive value", "--gain"]),
    ("--gain", _nan_gain, ["nan.gain", "NaN", "--gain"]),
    ("--dark", lambda data: data / "missing_dark.mrc", ["missing_dark.mrc", "not found", "--dark"]),
    ("--dark", _small, ["dark.tif", "50 x 50 px", "--dark"]),
    ("--gain", lambda data: data / "missing.gain", ["missing.gain", "not found", "--gain"]),
]


@pytest.mark.parametrize("option,make,needles", REFERENCE_CASES, ids=[c[2][0] for c in REFERENCE_CASES])
def test_a_bad_gain_or_dark_reference_is_refused_at_import(project, data, option, make, needles):
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", data, option, make(data)])
    line = assert_refused(result, needles, project, before)
    if option == "--dark":
        assert "--gain" not in line


def _nan_line(folder: Path) -> None:
    (folder / "TS_A.rawtlt").write_text("-30\n-15\nnan\n15\n30\n")


def _inf_line(folder: Path) -> None:
    (folder / "TS_A.rawtlt").write_text("-30\n1e400\n0\n15\n30\n")


def _beyond_90(folder: Path) -> None:
    (folder / "TS_A.rawtlt").write_text("-30\n120\n0\n15\n30\n")


def _order_nan(folder: Path) -> None:
    (folder / "TS_A_order.csv").write_text("1, 0\n2, nan\n3, -15\n4, 30\n5, -30\n")


def _huge_pixel(folder: Path) -> None:
    with mrcfile.open(folder / "TS_A.st", "r+") as mrc:
        mrc.voxel_size = 500.0


# (how the stack folder is spoiled, words) — row 14 and the stack header
STACK_CASES = [
    (_nan_line, ["TS_A.rawtlt:3", "'nan'", "tilt angle"]),
    (_inf_line, ["TS_A.rawtlt:2", "1e400"]),
    (_beyond_90, ["TS_A.rawtlt:2", "'120'"]),
    (_order_nan, ["TS_A_order.csv:2", "nan"]),
    (_huge_pixel, ["TS_A.st", "pixel size 500", "--pixel-size"]),
]


@pytest.mark.parametrize("spoil,needles", STACK_CASES, ids=[c[0].__name__ for c in STACK_CASES])
def test_a_bad_angle_file_or_stack_header_is_refused(project, tmp_path, spoil, needles):
    folder = write_stack(tmp_path / "stacks").parent
    spoil(folder)
    before = project_state(project)
    result = invoke(["import-tilt-series", "-p", project, "--files", folder, "--pattern", "*.st", "--voltage", "300"])
    assert_refused(result, needles, project, before)


def test_a_tiff_with_pages_of_different_sizes_is_refused(project, data):
    movie = _first_movie(data)
    frames = tifffile.imread(movie)
    with tifffile.TiffWriter(movie) as tif:
        tif.write(frames[0], contiguous=False, photometric="minisblack")
        tif.write(frames[1, :40, :60], contiguous=False, photometric="minisblack")
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", data])
    assert_refused(result, [movie.name, "pages of different sizes"], project, before)


# -- accepted inputs ------------------------------------------------------------------------------
def test_a_tiff_written_one_page_per_series_reads_every_frame(data, tmp_path):
    """row 16: import counted 4 frames, motion-ctf read 1; both now read every page."""
    movie = _first_movie(data)
    frames = tifffile.imread(movie)
    with tifffile.TiffWriter(movie) as tif:
        for frame in frames:
            tif.write(frame, contiguous=False, photometric="minisblack", compression="zlib")
    assert read_movie_header(movie).n_frames == len(frames) == 3
    np.testing.assert_array_equal(read_movie_frames(movie), frames)
    result = invoke(["import-movies", "-p", tmp_path / "p", "--files", data])
    assert result.exit_code == 0, result.output
    store = ProjectStore(tmp_path / "p")
    ts = store.load(store.resolve("1")).items[0]
    assert all(im.frames == 3 for im in ts.images)


def test_a_zero_dark_and_a_gain_with_dead_pixels_are_accepted(data, tmp_path):
    gain = data / "dead.gain"
    values = np.ones((96, 128), np.float32)
    values[10:20, 5] = 0.0
    tifffile.imwrite(gain, values)
    dark = data / "dark.mrc"
    with mrcfile.new(dark) as mrc:
        mrc.set_data(np.zeros((96, 128), np.float32))
    result = invoke(["import-movies", "-p", tmp_path / "p", "--files", data, "--gain", gain, "--dark", dark])
    assert result.exit_code == 0, result.output
    store = ProjectStore(tmp_path / "p")
    value = store.load(store.resolve("1"))
    assert value.dark_file == str(dark) and value.gain_file == str(gain)


def test_voltage_zero_in_an_mdoc_means_unknown(data, tmp_path):
    text = (data / "TS_01.mdoc").read_text()
    (data / "TS_01.mdoc").write_text(re.sub(r"Voltage = \S+", "Voltage = 0", text))
    root = tmp_path / "p"
    unknown = invoke(["import-movies", "-p", root, "--files", data])
    assert_refused(unknown, ["TS_01.mdoc", "no Voltage", "--voltage"], None)
    given = invoke(["import-movies", "-p", root, "--files", data, "--voltage", "200"])
    assert given.exit_code == 0, given.output
    store = ProjectStore(root)
    assert store.load(store.resolve("1")).items[0].acquisition.voltage_kv == 200.0


def test_plausible_extremes_of_an_mdoc_are_accepted(data, tmp_path):
    text = (data / "TS_01.mdoc").read_text()
    text = re.sub(r"Voltage = \S+", "Voltage = 60", text)
    text = re.sub(r"PixelSpacing = \S+", "PixelSpacing = 0.1", text)
    (data / "TS_01.mdoc").write_text(text)
    result = invoke(["import-movies", "-p", tmp_path / "p", "--files", data])
    assert result.exit_code == 0, result.output
