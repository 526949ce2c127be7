"""import-movies and import-tilt-series against the simulator's truth, the corpus, and bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tiltflow.io.mrc import write_mrc
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

SMALL = dict(n_series=2, n_tilts=7, size=(96, 80), n_frames=3, seed=3)


@pytest.fixture(scope="module")
def serialem_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serialem")
    write_demo_dataset(out, DemoConfig(**SMALL, flavour="serialem"), force=True)
    return out


@pytest.fixture(scope="module")
def tomo5_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tomo5")
    write_demo_dataset(out, DemoConfig(**SMALL, flavour="tomo5"), force=True)
    return out


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def import_movies(store, files, **params):
    run = run_step(store, "import-movies", {"files": str(files), **params})
    return store.load(store.resolve(str(run.id)))


def assert_matches_truth(ts_set, truth):
    by_id = {s["tsId"]: s for s in truth["series"]}
    assert sorted(by_id) == [ts.ts_id for ts in ts_set.items]
    for ts in ts_set.items:
        t = by_id[ts.ts_id]
        assert ts.acquisition.tilt_axis_deg == pytest.approx(t["mdoc_tilt_axis_deg"], abs=1e-3)
        assert ts.acquisition.pixel_size_a == pytest.approx(t["pixel_size_a"])
        assert ts.acquisition.voltage_kv == pytest.approx(t["voltage_kv"])
        assert ts.size == tuple(t["image_size"])
        truth_tilts = sorted(t["tilts"], key=lambda x: x["mdoc_tilt_angle_deg"])
        assert len(ts.images) == len(truth_tilts)
        for im, tt in zip(ts.images, truth_tilts, strict=False):
            assert im.tilt_angle_deg == pytest.approx(tt["mdoc_tilt_angle_deg"], abs=1e-4)
            assert im.acquisition_order == tt["acquisition_order"] + 1
            assert im.dose_e_a2 == pytest.approx(tt["dose_e_a2"], rel=1e-3)
            assert im.dose_prior_e_a2 == pytest.approx(tt["prior_dose_e_a2"], rel=1e-3, abs=1e-6)
            assert im.dose_accumulated_e_a2 == pytest.approx(tt["accumulated_dose_e_a2"], rel=1e-3)
            assert Path(im.file).name == Path(tt["movie"]).name
            assert im.frames == t["n_frames"] and im.enabled
        angles = [im.tilt_angle_deg for im in ts.images]
        assert angles == sorted(angles)


@pytest.mark.parametrize("flavour", ["serialem", "tomo5"])
def test_import_matches_truth(flavour, serialem_data, tomo5_data, tmp_path):
    data = serialem_data if flavour == "serialem" else tomo5_data
    truth = json.loads((data / "truth.json").read_text())
    store = ProjectStore(tmp_path / "p")
    ts_set = import_movies(store, data, tomo5=(flavour == "tomo5"), gain=str(data / "gain_ref.gain"))
    assert ts_set.summary() == "TiltSeriesM (2 items, 7 x 96 x 80 x 3, 2.76 Å/px)"
    assert_matches_truth(ts_set, truth)
    assert ts_set.gain_file.endswith("gain_ref.gain")


def test_user_values_win_over_mdoc(serialem_data, tmp_path):
    store = ProjectStore(tmp_path / "p")
    ts_set = import_movies(
        store,
        serialem_data,
        voltage_kv=200,
        pixel_size_a=1.5,
        tilt_axis_deg=-12.5,
        dose_per_tilt_e_a2=2.0,
        initial_dose_e_a2=1.0,
    )
    ts = ts_set.items[0]
    assert (ts.acquisition.voltage_kv, ts.acquisition.pixel_size_a, ts.acquisition.tilt_axis_deg) == (200, 1.5, -12.5)
    first = min(ts.images, key=lambda im: im.acquisition_order)
    last = max(ts.images, key=lambda im: im.acquisition_order)
    assert first.dose_prior_e_a2 == pytest.approx(1.0)
    assert last.dose_accumulated_e_a2 == pytest.approx(1.0 + 2.0 * len(ts.images))


def test_stack_with_rawtlt_imports_like_movies(serialem_data, tmp_path):
    """The frame averages written as stack + .rawtlt + order list give the same tilt series."""
    from tiltflow.io.movies import read_movie_frames

    store = ProjectStore(tmp_path / "p")
    movies = import_movies(store, serialem_data)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    for ts in movies.items:
        data = np.stack([read_movie_frames(im.file).astype(np.float32).mean(0) for im in ts.images])
        write_mrc(stacks / f"{ts.ts_id}.st", data, voxel_size_a=ts.acquisition.pixel_size_a)
        (stacks / f"{ts.ts_id}.rawtlt").write_text("".join(f"{im.tilt_angle_deg:.5f}\n" for im in ts.images))
        (stacks / f"{ts.ts_id}_order.csv").write_text(
            "".join(f"{im.acquisition_order},{im.tilt_angle_deg:.5f}\n" for im in ts.images)
        )
    run = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(stacks),
            "pattern": "{TS}.st",
            "angles": "tlt",
            "voltage_kv": 300,
            "tilt_axis_deg": 85.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    stacked = store.load(store.resolve(str(run.id)))
    assert stacked.kind == "TiltSeries"
    assert stacked.summary() == "TiltSeries (2 items, 7 x 96 x 80, 2.76 Å/px)"
    for a, b in zip(movies.items, stacked.items, strict=False):
        assert a.ts_id == b.ts_id
        assert [im.tilt_angle_deg for im in b.images] == pytest.approx([im.tilt_angle_deg for im in a.images], abs=1e-4)
        assert [im.acquisition_order for im in b.images] == [im.acquisition_order for im in a.images]
        assert [im.dose_accumulated_e_a2 for im in b.images] == pytest.approx(
            [im.dose_accumulated_e_a2 for im in a.images]
        )
        assert [im.index for im in b.images] == list(range(len(b.images)))


def test_corpus_seri_stack_imports_with_header_angles(corpus, tmp_path):
    folder = corpus / "images" / "etspy_serialem_NIST_Titan"
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "test_000.mrc", "angles": "header", "voltage_kv": 300},
    )
    ts_set = store.load(store.resolve(str(run.id)))
    ts = ts_set.items[0]
    assert ts.ts_id == "test_000" and len(ts.images) == 2 and ts.size == (1024, 1024)
    assert [im.tilt_angle_deg for im in ts.images] == [0.0, 0.0]  # the file's SERI header: both sections at 0°
    assert ts.acquisition.pixel_size_a == pytest.approx(7.88)
    assert any("same tilt angle" in w for w in ts.attrs["warnings"])


def test_corpus_seri_stack_imports_with_mdoc(corpus, tmp_path):
    folder = corpus / "images" / "etspy_serialem_NIST_Titan"
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "test_000.mrc", "angles": "mdoc", "dose_per_tilt_e_a2": 1.0},
    )
    ts = store.load(store.resolve(str(run.id))).items[0]
    assert ts.acquisition.tilt_axis_deg == pytest.approx(-90.0)
    assert ts.acquisition.voltage_kv == 300
    assert [im.tilt_angle_deg for im in ts.images] == pytest.approx([-0.000488, -0.000488])
