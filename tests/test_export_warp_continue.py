"""``export --format warp`` gives what WarpTools continues from (issue 12, item 14): every tilt's
``MoviePath`` leads to a frame-series ``<Movie>`` XML whose ``DataDirectory`` holds the raw movie and
whose averages (``average/<stem>.mrc``, odd/even) are the exported views; the tilt-series XML carries
the ``<CTF>`` parameters and the grids real WarpTools XMLs carry (compared with the corpus)."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import read_section, read_stack
from tiltflow.io.star import read_motion_star
from tiltflow.io.warp import grid_values, read_warp_xml
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

# what only Warp's own CTF fitting writes (1-D spectra and their fits, its fitting options)
FITTING_ONLY = {"TiltPS1D", "TiltSimulatedScale", "PS1D", "SimulatedScale", "OptionsCTF"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A motion-corrected + CTF-estimated demo series exported for Warp."""
    root = tmp_path_factory.mktemp("warp")
    data = root / "data"
    write_demo_dataset(
        data, DemoConfig(n_series=1, n_tilts=5, size=(256, 256), n_frames=4, seed=3, local_motion=False), force=True
    )
    store = ProjectStore(root / "p")
    imp = run_step(store, "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain")})
    run = run_step(
        store,
        "motion-ctf",
        {"window_px": 128, "ctf_range_a": [30.0, 8.0], "motion_grid": [1, 1, 1]},
        {"input": str(imp.id)},
    )
    out = root / "export"
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), f"{run.id}.TiltSeries", "--format", "warp", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ts = store.load(store.resolve(f"{run.id}.TiltSeries")).items[0]
    return out, ts, store.root / store.run(run.id).run_dir


def _children(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot())


def test_every_movie_path_leads_to_a_frame_series_warptools_reads(exported):
    out, ts, run_dir = exported
    w = read_warp_xml(out / "warp_tiltseries" / f"{ts.ts_id}.xml")
    tomostar = Path(w.attributes["DataDirectory"])
    assert tomostar == (out / "tomostar").absolute()
    for i, (im, movie_path) in enumerate(zip(ts.images, w.per_tilt["MoviePath"], strict=False)):
        movie = (tomostar / movie_path).resolve()  # WarpTools: DataDirectory + MoviePath
        stem = movie.stem
        xml = movie.parent / f"{stem}.xml"  # Movie.XMLPath
        root = ET.parse(xml).getroot()
        assert root.tag == "Movie"
        assert (Path(root.get("DataDirectory")) / movie.name).is_file()  # the raw movie (header read)
        average = movie.parent / "average" / f"{stem}.mrc"  # Movie.AveragePath
        np.testing.assert_array_equal(read_stack(average), read_section(im.file, im.index)[None])
        for half, name in ((im.odd_file, "odd"), (im.even_file, "even")):
            np.testing.assert_array_equal(
                read_stack(movie.parent / "average" / name / f"{stem}.mrc"), read_section(half, im.index)[None]
            )
        # the tilt's CTF, the same as the tilt series' per-tilt grid
        ctf = {p.get("Name"): p.get("Value") for p in root.find("CTF")}
        grids = {el.tag: el for el in root}
        tilt_grid = {el.tag: grid_values(el) for el in w.other}
        assert float(ctf["Defocus"]) == pytest.approx(tilt_grid["GridCTF"][i], rel=1e-5)
        assert grid_values(grids["GridCTF"]) == pytest.approx([tilt_grid["GridCTF"][i]], rel=1e-5)
        assert float(ctf["Voltage"]) == 300 and float(ctf["PixelSize"]) == pytest.approx(2.76)
        # frame shifts, Å: WarpTools finds a feature of the average at p - grid in the frame
        shifts = read_motion_star(run_dir / "motion" / f"{ts.ts_id}_{im.acquisition_order:03d}.star")
        assert grid_values(grids["GridMovementX"]) == pytest.approx((-shifts[:, 0] * 2.76).tolist(), abs=1e-4)
        assert grid_values(grids["GridMovementY"]) == pytest.approx((-shifts[:, 1] * 2.76).tolist(), abs=1e-4)


def test_tilt_series_xml_carries_what_warptools_writes(exported, corpus):
    out, ts, _ = exported
    ours = _children(out / "warp_tiltseries" / f"{ts.ts_id}.xml")
    for name in ("warpxmlfile_EMPIAR-10491_TS_1.xml", "pytom-match-pick_gs04_ts_003.xml"):
        real = _children(corpus / "warp" / name)
        tags = {el.tag for el in ours}
        assert {el.tag for el in real} - FITTING_ONLY <= tags, {el.tag for el in real} - FITTING_ONLY - tags
        real_ctf = [p.get("Name") for p in next(el for el in real if el.tag == "CTF")]
        assert [p.get("Name") for p in next(el for el in ours if el.tag == "CTF")] == real_ctf
        by_tag = {el.tag: el for el in ours}
        for el in real:
            if el.tag.startswith("Grid"):  # the same grid kind (cubic or 4-D), node attributes
                assert set(by_tag[el.tag].attrib) == set(el.attrib), el.tag
                assert set(by_tag[el.tag][0].attrib) == set(el[0].attrib), el.tag
    assert len(grid_values(next(el for el in ours if el.tag == "GridCTFPhase"))) == len(ts.images)
    assert "CTFResolutionEstimate" in ET.parse(out / "warp_tiltseries" / f"{ts.ts_id}.xml").getroot().attrib


def test_stacks_without_movies_get_a_stand_in_movie(tmp_path):
    from tiltflow.io.mrc import write_mrc

    folder = tmp_path / "stacks"
    data = np.random.default_rng(0).normal(size=(5, 32, 40)).astype(np.float32)
    write_mrc(folder / "TS_01.st", data, voxel_size_a=2.0)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in (-6, -3, 0, 3, 6)))
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "{TS}.st", "voltage": 300, "tilt-axis": 0.0, "dose": 2.0},
    )
    out = tmp_path / "export"
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), str(run.id), "--format", "warp", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    w = read_warp_xml(out / "warp_tiltseries" / "TS_01.xml")
    for i, movie_path in enumerate(w.per_tilt["MoviePath"]):
        movie = (out / "tomostar" / movie_path).resolve()
        root = ET.parse(movie.with_suffix(".xml")).getroot()
        assert (Path(root.get("DataDirectory")) / movie.name).is_file()
        np.testing.assert_array_equal(read_stack(movie.parent / "average" / f"{movie.stem}.mrc")[0], data[i])
