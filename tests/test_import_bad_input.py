"""Every bad input of the import issue: one line naming the file and the fix; project unchanged."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DemoConfig(n_series=2, n_tilts=5, size=(80, 64), n_frames=3, seed=5), force=True)
    return out


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def snapshot(store: ProjectStore):
    with store.reading() as con:
        tables = {
            t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("runs", "outputs", "tilt_series", "tilt_images")
        }
    files = sorted(str(p.relative_to(store.root)) for p in (store.root / "runs").rglob("*"))
    return tables, files


@pytest.fixture
def store(pristine, tmp_path) -> ProjectStore:
    store = ProjectStore(tmp_path / "project")
    run_step(store, "import-movies", {"files": str(pristine)})  # an earlier good run
    return store


def expect_error(store: ProjectStore, data_dir: Path, regex: str, **params) -> list[str]:
    before = snapshot(store)
    with pytest.raises(InputError) as info:
        run_step(store, "import-movies", {"files": str(data_dir), **params})
    assert snapshot(store) == before, "a failed import changed the project"
    problems = info.value.problems
    assert all("\n" not in p for p in problems)
    assert any(re.search(regex, p) for p in problems), problems
    return problems


def first_movie(data: Path, ts="TS_01") -> Path:
    return sorted((data / "frames").glob(f"{ts}_*"))[0]


def test_missing_movie(data, store, tmp_path):
    movie = first_movie(data)
    movie.unlink()
    problems = expect_error(store, data, rf"TS_01\.mdoc:\d+ \[ZValue = \d+\]: movie '{movie.name}' not found")
    assert any("copy it there" in p for p in problems)


def test_unreadable_movie(data, store, tmp_path):
    movie = first_movie(data)
    movie.write_bytes(b"this is not a tiff at all" * 10)
    expect_error(store, data, rf"{re.escape(str(movie))}: not a readable TIFF")


def test_truncated_tiff(data, store, tmp_path):
    movie = first_movie(data)
    raw = movie.read_bytes()
    # keep the IFDs (tifffile writes them first for contiguous data) but cut the pixel data
    movie.write_bytes(raw[: len(raw) // 2])
    expect_error(store, data, rf"{re.escape(str(movie))}: (truncated TIFF|not a readable TIFF)")


def test_movie_with_other_frame_count(data, store, tmp_path):
    movie = first_movie(data)
    frames = tifffile.imread(movie)
    tifffile.imwrite(movie, np.concatenate([frames, frames[:1]]), compression="lzw", photometric="minisblack")
    expect_error(store, data, rf"{re.escape(str(movie))}: 4 frames while the other movies of TS_01 have 3")


def test_movie_with_other_size(data, store, tmp_path):
    movie = first_movie(data)
    frames = tifffile.imread(movie)
    tifffile.imwrite(movie, frames[:, :40, :60], compression="lzw", photometric="minisblack")
    expect_error(store, data, rf"{re.escape(str(movie))}: 60 x 40 px while the other movies of TS_01 are 80 x 64")


def test_gain_of_wrong_shape(data, store, tmp_path):
    gain = data / "bad.gain"
    tifffile.imwrite(gain, np.ones((50, 50), np.float32))
    expect_error(
        store, data, r"bad\.gain: gain is 50 x 50 px, the movies are 80 x 64 — no orientation fits", gain=str(gain)
    )


def test_transposed_gain_is_accepted(data, store, tmp_path):
    gain = data / "t.gain"
    tifffile.imwrite(gain, np.ones((80, 64), np.float32))
    store = ProjectStore(tmp_path / "p")
    run = run_step(store, "import-movies", {"files": str(data), "gain": str(gain)})
    assert store.outputs(run.id)[0].attrs["gain_fits"] == ["transposed"]


def _edit_mdoc(path: Path, fn) -> None:
    path.write_text(fn(path.read_text()))


def test_duplicate_tilt_angles(data, store, tmp_path):
    mdoc = data / "TS_01.mdoc"
    text = mdoc.read_text()
    angles = re.findall(r"TiltAngle = (\S+)", text)
    _edit_mdoc(mdoc, lambda t: t.replace(f"TiltAngle = {angles[1]}", f"TiltAngle = {float(angles[0]) + 0.01}", 1))
    expect_error(store, data, r"TS_01\.mdoc.*(nearly) the same tilt angle".replace("(", r"\(").replace(")", r"\)"))


def test_mixed_pixel_sizes(data, store, tmp_path):
    _edit_mdoc(data / "TS_01.mdoc", lambda t: t.replace("PixelSpacing = 2.76", "PixelSpacing = 1.38"))
    expect_error(store, data, r"mixed pixel sizes in one import")


@pytest.mark.parametrize("key,option", [("Voltage", "--voltage"), ("PixelSpacing", "--pixel-size")])
def test_missing_acquisition_value(data, store, tmp_path, key, option):
    _edit_mdoc(data / "TS_01.mdoc", lambda t: re.sub(rf"^{key} = .*\n", "", t, flags=re.M))
    expect_error(store, data, rf"TS_01\.mdoc: no {key} in the mdoc — give {option}")


def test_missing_dose(data, store, tmp_path):
    def strip(t):
        for key in ("ExposureDose", "FrameDosesAndNumber", "DoseRate", "PriorRecordDose"):
            t = re.sub(rf"^{key} = .*\n", "", t, flags=re.M)
        return t

    _edit_mdoc(data / "TS_01.mdoc", strip)
    expect_error(store, data, r"TS_01\.mdoc: no dose in the mdoc .* give --dose")


def test_empty_mdoc(data, store, tmp_path):
    (data / "TS_01.mdoc").write_text("")
    expect_error(store, data, r"TS_01\.mdoc")


def test_not_an_mdoc(data, store, tmp_path):
    (data / "TS_01.mdoc").write_bytes(bytes(range(256)) * 4)
    expect_error(store, data, r"TS_01\.mdoc")


def test_all_problems_listed_at_once(data, store, tmp_path):
    first_movie(data, "TS_01").unlink()
    first_movie(data, "TS_02").unlink()
    problems = expect_error(store, data, r"2 of 2 series have problems")
    assert sum("not found" in p for p in problems) == 2


def test_skip_bad_imports_the_rest(data, store, tmp_path):
    first_movie(data, "TS_01").unlink()
    store = ProjectStore(tmp_path / "p")
    run = run_step(store, "import-movies", {"files": str(data)}, options={"skip_bad": True})
    ts_set = store.load(store.resolve(str(run.id)))
    assert [ts.ts_id for ts in ts_set.items] == ["TS_02"]


def test_no_mdoc_matches(data, store, tmp_path):
    expect_error(store, data, r"no file matches --pattern '\*\.nothing'", pattern="*.nothing")


def test_cli_prints_one_line_and_exits_2(data, store, tmp_path):
    from click.testing import CliRunner

    from tiltflow.cli.main import build_cli

    first_movie(data).unlink()
    result = CliRunner().invoke(build_cli(), ["import-movies", "-p", str(tmp_path / "p"), "--files", str(data)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert re.search(r"error: .*TS_01\.mdoc:\d+ \[ZValue = \d+\]: movie .* not found", result.output)
