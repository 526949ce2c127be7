"""The xray-erase step: same size and order out, flags passed through, hits erased, positions saved."""

import numpy as np
import pytest

from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


@pytest.fixture
def project_with_stack(tmp_path):
    rng = np.random.default_rng(0)
    n, ny, nx = 5, 160, 192
    clean = rng.poisson(20.0, size=(n, ny, nx)).astype(np.float32)
    hits = []
    data = clean.copy()
    for v in range(n):
        for _ in range(6):
            y, x = int(rng.integers(10, ny - 10)), int(rng.integers(10, nx - 10))
            data[v, y, x] += 200.0  # ~45 SD above the local mean
            hits.append((v, x, y))
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", data, voxel_size_a=2.0)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in (-6, -3, 0, 3, 6)))
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 0.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    return store, run, clean, data, hits


def test_xray_erase_step(project_with_stack):
    store, run, clean, data, hits = project_with_stack
    out = store.resolve(str(run.id))
    value = store.load(out)
    value.items[0].images[1].enabled = False  # a flag that must pass through
    store.add_output(run.id, "TiltSeries_flags", value)
    erase = run_step(store, "xray-erase", {"imod_model": True}, {"input": f"{run.id}.TiltSeries_flags"})
    result = store.load(store.resolve(str(erase.id)))
    ts = result.items[0]
    assert [im.enabled for im in ts.images] == [True, False, True, True, True]
    assert [im.tilt_angle_deg for im in ts.images] == [-6, -3, 0, 3, 6]
    erased = read_stack(ts.images[0].file)
    assert erased.shape == data.shape
    for v, x, y in hits:
        assert abs(erased[v, y, x] - 20.0) < 15.0, (v, x, y, erased[v, y, x])
    changed = erased != data
    hit_mask = np.zeros_like(changed)
    for v, x, y in hits:
        hit_mask[v, y - 1 : y + 2, x - 1 : x + 2] = True
    assert changed[~hit_mask].mean() < 1e-4
    positions = np.loadtxt(ts.attrs["xray_pixels"], dtype=int, ndmin=2)
    assert {(v, x, y) for v, x, y in hits} <= {tuple(r) for r in positions}
    assert sum(im.attrs["xray_erased_px"] for im in ts.images) == len(positions)
    assert "px erased" in store.outputs(erase.id)[0].summary
    assert ts.attrs["xray_model"].endswith(".mod")


def test_rejects_movies(tmp_path):
    from tiltflow.testing.demo import DemoConfig, write_demo_dataset
    from tiltflow.workflow.errors import InputError

    write_demo_dataset(tmp_path / "d", DemoConfig(n_series=1, n_tilts=3, size=(64, 64), n_frames=2), force=True)
    store = ProjectStore(tmp_path / "p")
    run = run_step(store, "import-movies", {"files": str(tmp_path / "d")})
    with pytest.raises(InputError, match="needs TiltSeries"):
        run_step(store, "xray-erase", {}, {"input": f"{run.id}.TiltSeriesM"})
