"""The motion-ctf step on simulated movies: outputs, files, accuracy against truth, bad movies."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tiltflow.io.ctffind import read_ctffind
from tiltflow.io.mrc import read_stack
from tiltflow.io.star import read_motion_star
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

PARAMS = {"window_px": 256, "ctf_range_a": [30.0, 7.0], "motion_grid": [1, 1, 1]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(
        out, DemoConfig(n_series=1, n_tilts=5, size=(384, 384), n_frames=8, seed=4, local_motion=False), force=True
    )
    return out


def imported(tmp_path, data):
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store, "import-movies", {"files": str(data), "gain": str(data / "gain_ref.gain"), "amplitude_contrast": 0.07}
    )
    return store, run


def test_motion_ctf_outputs_and_accuracy(demo, tmp_path):
    truth = json.loads((demo / "truth.json").read_text())["series"][0]
    by_order = {t["acquisition_order"] + 1: t for t in truth["tilts"]}
    store, imp = imported(tmp_path, demo)
    run = run_step(store, "motion-ctf", PARAMS, {"input": str(imp.id)})
    outs = {o.name: o for o in store.outputs(run.id)}
    assert outs["TiltSeries"].summary == "TiltSeries (1 item, 5 x 384 x 384, +oe, 2.76 Å/px)"
    assert outs["CTFTomoSeries"].summary == "CTFTomoSeries (1 item, 5 tilts, CTF: 1 good)"
    ts = store.load(outs["TiltSeries"]).items[0]
    angles = [im.tilt_angle_deg for im in ts.images]
    assert angles == sorted(angles) and [im.index for im in ts.images] == list(range(5))
    total, even, odd = (
        read_stack(ts.images[0].file),
        read_stack(ts.images[0].even_file),
        read_stack(ts.images[0].odd_file),
    )
    assert total.shape == (5, 384, 384)
    np.testing.assert_allclose(even + odd, total, rtol=1e-4, atol=1e-3)
    errors = []
    for im in ts.images:
        t = by_order[im.acquisition_order]
        assert im.dose_accumulated_e_a2 == pytest.approx(t["accumulated_dose_e_a2"])
        star = store.root / store.run(run.id).run_dir / "motion" / f"{ts.ts_id}_{im.acquisition_order:03d}.star"
        est = read_motion_star(star)
        true = np.array(t["frame_shifts_px"])
        errors.append(np.sqrt((((est - est.mean(0)) - (true - true.mean(0))) ** 2).sum(1).mean()))
        assert im.total_motion_px > 0
    assert np.median(errors) <= 0.2, errors
    ctf = store.load(outs["CTFTomoSeries"]).items[0]
    mean_err = [
        abs(
            c.defocus_mean_a
            - 0.5 * (by_order[c.acquisition_order]["defocus_u_a"] + by_order[c.acquisition_order]["defocus_v_a"])
        )
        for c in ctf.items
    ]
    assert np.median(mean_err) <= 400, mean_err  # 384 px images: few tiles; benchmarks measure more
    assert all(Path(c.spectrum_file).read_bytes()[:4] == b"\x89PNG" for c in ctf.items)
    text = read_ctffind(ctf.ctffind_file)
    assert len(text.rows) == 5
    assert [r.defocus_1_a for r in text.rows] == pytest.approx([c.defocus_u_a for c in ctf.items], rel=1e-4)
    assert Path(ctf.defocus_file).is_file()
    # the tilt series carries the CTF set's (series pass) values, which align and xray-erase copy on
    ts = store.load(outs["TiltSeries"]).items[0]
    by_tilt = {c.acquisition_order: c for c in ctf.items}
    assert all(im.defocus_u_a == by_tilt[im.acquisition_order].defocus_u_a for im in ts.images)


def _break_movie(data: Path, how: str) -> Path:
    movie = sorted((data / "frames").glob("*.tif"))[2]
    frames = tifffile.imread(movie)
    if how == "zeros":
        frames[1] = 0
    elif how == "one_frame":
        frames = frames[:1]
    elif how == "unreadable":
        movie.write_bytes(b"garbage" * 100)
        return movie
    tifffile.imwrite(movie, frames, compression="lzw", photometric="minisblack")
    return movie


@pytest.mark.parametrize("how,message", [("zeros", "all zeros"), ("unreadable", "not a readable TIFF")])
def test_bad_movie_fails_run_or_is_skipped(demo, tmp_path, how, message):
    data = Path(shutil.copytree(demo, tmp_path / "data"))
    store, imp = imported(tmp_path, data)  # import reads headers only: a zero frame passes it
    movie = _break_movie(data, how)
    with pytest.raises(RuntimeError, match=message):
        run_step(store, "motion-ctf", {**PARAMS, "estimate_ctf": False}, {"input": str(imp.id)})
    failed = store.runs()[-1]
    assert failed.status == "failed" and store.outputs(failed.id) == []
    run = run_step(
        store, "motion-ctf", {**PARAMS, "estimate_ctf": False}, {"input": str(imp.id)}, options={"skip_bad": True}
    )
    ts = store.load(store.output(run.id, "TiltSeries")).items[0]
    assert len(ts.images) == 4 and str(movie) not in [im.movie for im in ts.images]


def test_one_frame_movies(demo, tmp_path):
    """A single-frame movie among 8-frame siblings is caught at import; if every movie has one frame,
    motion correction refuses them one by one."""
    from tiltflow.workflow.errors import InputError

    data = Path(shutil.copytree(demo, tmp_path / "data"))
    store = ProjectStore(tmp_path / "p")
    _break_movie(data, "one_frame")
    with pytest.raises(InputError, match="1 frames while the other movies of TS_01 have 8"):
        run_step(store, "import-movies", {"files": str(data)})
    for movie in (data / "frames").glob("*.tif"):
        tifffile.imwrite(movie, tifffile.imread(movie)[:1][None].reshape(1, 384, 384), photometric="minisblack")
    imp = run_step(store, "import-movies", {"files": str(data)})
    with pytest.raises(RuntimeError, match="5 movie.*only 1 frame"):
        run_step(store, "motion-ctf", {**PARAMS, "estimate_ctf": False}, {"input": str(imp.id)})


def test_ctf_step_on_stacks_agrees_with_truth(demo, tmp_path):
    """CTF alone on the motion-corrected stacks (any tilt-series set), with a defocus grid."""
    truth = json.loads((demo / "truth.json").read_text())["series"][0]
    by_order = {t["acquisition_order"] + 1: t for t in truth["tilts"]}
    store, imp = imported(tmp_path, demo)
    motion = run_step(store, "motion-ctf", {**PARAMS, "estimate_ctf": False}, {"input": str(imp.id)})
    run = run_step(
        store,
        "ctf",
        {"window_px": 128, "ctf_range_a": [30.0, 7.0], "defocus_grid": [2, 2, 2]},
        {"input": f"{motion.id}.TiltSeries"},
    )
    ctf = store.load(store.output(run.id, "CTFTomoSeries")).items[0]
    assert len(ctf.items) == 5
    errors = [
        abs(
            c.defocus_mean_a
            - 0.5 * (by_order[c.acquisition_order]["defocus_u_a"] + by_order[c.acquisition_order]["defocus_v_a"])
        )
        for c in ctf.items
    ]
    assert np.median(errors) <= 400, errors
    grids = [np.array(c.attrs["defocus_grid_a"]) for c in ctf.items]
    assert all(g.shape == (2, 2) for g in grids)
    assert read_ctffind(ctf.ctffind_file).rows[0].defocus_1_a == pytest.approx(ctf.items[0].defocus_u_a, rel=1e-4)


def test_movie_prefetcher_decodes_ahead_in_a_background_thread(tmp_path, monkeypatch):
    """get() returns what read_movie_frames returns; the next movies are decoded by the prefetch
    thread while the caller works; out-of-order and unknown paths are read by the caller; a corrupt
    movie raises its MovieError from get()."""
    import threading
    import time

    from tiltflow.io import movies
    from tiltflow.io.movies import MovieError, MoviePrefetcher, read_movie_frames

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"m{i}.tif"
        tifffile.imwrite(
            p, rng.integers(0, 5, (3, 32, 40), dtype=np.uint8), compression="lzw", photometric="minisblack"
        )
        paths.append(p)
    (tmp_path / "bad.tif").write_bytes(b"garbage" * 10)
    decoded_by = {}
    real = movies.read_movie_frames

    def spy(path, **kw):
        decoded_by[str(path)] = threading.current_thread().name
        return real(path, **kw)

    monkeypatch.setattr(movies, "read_movie_frames", spy)
    order = [*paths[:2], tmp_path / "bad.tif", *paths[2:]]
    with MoviePrefetcher(order, depth=1) as prefetch:
        for p in paths[:2]:
            assert np.array_equal(prefetch.get(p), read_movie_frames(p))
            for _ in range(500):  # "computing": the next movie is decoded meanwhile
                if str(order[order.index(p) + 1]) in decoded_by:
                    break
                time.sleep(0.01)
        with pytest.raises(MovieError, match="bad.tif"):
            prefetch.get(tmp_path / "bad.tif")
        assert np.array_equal(prefetch.get(paths[3]), read_movie_frames(paths[3]))  # skips m2
        assert np.array_equal(prefetch.get(paths[2]), read_movie_frames(paths[2]))
    assert decoded_by[str(paths[0])] == decoded_by[str(paths[1])] == "movie-prefetch"
    assert decoded_by[str(tmp_path / "bad.tif")] == "movie-prefetch"
    assert not any(t.name == "movie-prefetch" for t in threading.enumerate())
