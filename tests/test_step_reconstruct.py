"""The reconstruct step on a simulated series with its true alignment: beads at their true 3-D
positions within 1 voxel; WBP and SIRT; even/odd refused without halves."""

import numpy as np
import pytest
import torch

from tiltflow.core.geometry import xf_from_geometry
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.testing.acquisition import plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import render_truth_tilt
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    config = DemoConfig(n_series=1, n_tilts=31, size=(256, 256), n_frames=2, seed=11, n_beads=10)
    series = plan_series(config, 0, np.random.default_rng(11))
    order = sorted(range(len(series["tilts"])), key=lambda i: series["tilts"][i]["mdoc_tilt_angle_deg"])
    views = np.stack([render_truth_tilt(series, i, with_texture=False).numpy() for i in order])
    folder = tmp_path_factory.mktemp("stack")
    write_mrc(folder / "TS_01.st", views, voxel_size_a=series["pixel_size_a"])
    (folder / "TS_01.rawtlt").write_text("".join(f"{series['tilts'][i]['true_tilt_angle_deg']:.4f}\n" for i in order))
    shifts = torch.tensor([series["tilts"][i]["stage_shift_px"] for i in order], dtype=torch.float64)
    xf = xf_from_geometry(series["tilt_axis_deg"], shifts)
    return folder, series, xf


def aligned_project(tmp_path, folder, xf):
    store = ProjectStore(tmp_path / "p")
    run = run_step(store, "import-tilt-series", {"files": str(folder), "pattern": "{TS}.st", "voltage_kv": 300,
                                                 "tilt_axis_deg": 0.0})
    value = store.load(store.resolve(str(run.id)))
    for im, row in zip(value.items[0].images, xf.tolist()):
        im.transform = row
    store.add_output(run.id, "TiltSeries_aligned", value)
    return store, f"{run.id}.TiltSeries_aligned"


@pytest.mark.parametrize("method", ["wbp", "sirt"])
def test_beads_at_true_positions(simulated, tmp_path, method):
    folder, series, xf = simulated
    store, pointer = aligned_project(tmp_path, folder, xf)
    binning, thickness_nm = 2, 180.0
    run = run_step(store, "reconstruct", {"method": method, "binning": binning, "thickness_nm": thickness_nm,
                                          "sirt_iterations": 8}, {"input": pointer})
    tomo = store.load(store.resolve(str(run.id))).items[0]
    vol = read_stack(tomo.file)
    nz, ny, nx = vol.shape
    assert (ny, nx) == (128, 128) and nz == round(thickness_nm * 10 / (series["pixel_size_a"] * binning))
    assert tomo.voxel_size_a == pytest.approx(series["pixel_size_a"] * binning)
    import scipy.ndimage as ndi

    smooth = ndi.gaussian_filter(vol, 1.0)
    r = int(np.ceil(50.0 / tomo.voxel_size_a)) + 3      # 10 nm beads: radius 50 Å, plus a margin
    errors = []
    for x, y, z in series["bead_xyz_px"]:
        p = np.array([z / binning + (nz - 1) / 2, y / binning + (ny - 1) / 2, x / binning + (nx - 1) / 2])
        if np.any(p < r) or np.any(p > np.array(vol.shape) - r - 1):
            continue
        lo = np.round(p).astype(int) - r
        box = smooth[lo[0]:lo[0] + 2 * r + 1, lo[1]:lo[1] + 2 * r + 1, lo[2]:lo[2] + 2 * r + 1]
        weight = np.clip(np.median(box) - box, 0, None) ** 2          # gold is dark
        grid = np.indices(box.shape).reshape(3, -1)
        found = lo + (grid * weight.reshape(-1)).sum(1) / weight.sum()
        errors.append(np.linalg.norm(found - p))
    assert len(errors) >= 3, errors
    assert np.median(errors) <= 1.0, errors


def test_even_odd_needs_halves(simulated, tmp_path):
    folder, _, xf = simulated
    store, pointer = aligned_project(tmp_path, folder, xf)
    with pytest.raises(InputError, match="needs odd/even stacks"):
        run_step(store, "reconstruct", {"even_odd": True}, {"input": pointer})
