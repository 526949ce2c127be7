"""The normalize step (IMOD newstack): requested mean/SD or range, storage mode, binning equal to
core.reconstruct.bin_views, alignment shifts and pixel size following the binning."""

import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.core.reconstruct import bin_views
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

N, NY, NX, PIXEL_A = 4, 96, 128, 1.5
XF = [0.9, -0.1, 0.1, 0.9, 12.0, -6.0]


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(3)
    views = np.stack([rng.normal(100 + 10 * v, 5 + v, size=(NY, NX)) for v in range(N)]).astype(np.float32)
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", views, voxel_size_a=PIXEL_A)
    write_mrc(folder / "TS_01_odd.st", 0.5 * views, voxel_size_a=PIXEL_A)
    write_mrc(folder / "TS_01_even.st", 0.5 * views + 3, voxel_size_a=PIXEL_A)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in (-3, 0, 3, 6)))
    store = ProjectStore(tmp_path / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "TS_01.st", "voltage_kv": 300, "tilt_axis_deg": 0.0, "pixel_size_a": PIXEL_A},
    )
    value = store.load(store.resolve(str(imp.id)))
    for im in value.items[0].images:
        im.transform = list(XF)
        im.odd_file, im.even_file = str(folder / "TS_01_odd.st"), str(folder / "TS_01_even.st")
    value.items[0].images[2].enabled = False
    store.add_output(imp.id, "TiltSeries_aligned", value)
    return store, f"{imp.id}.TiltSeries_aligned", views


def _mode(path) -> int:
    with mrcfile.open(path, header_only=True) as m:
        return int(m.header.mode)


def test_mean_sd_binning_and_geometry(project):
    store, pointer, views = project
    run = run_step(store, "normalize", {"binning": 2, "scale": "mean_sd", "mean": 0.0, "sd": 1.0}, {"input": pointer})
    ts = store.load(store.resolve(str(run.id))).items[0]
    out = read_stack(ts.images[0].file)
    assert _mode(ts.images[0].file) == 2 and out.shape == (N, NY // 2, NX // 2)
    assert ts.size == (NX // 2, NY // 2) and ts.acquisition.pixel_size_a == 2 * PIXEL_A
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.0, atol=1e-5)
    binned = bin_views(torch.from_numpy(views), 2).double().numpy()  # the same binning as reconstruct
    want = (binned - binned.mean(axis=(1, 2), keepdims=True)) / binned.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, want, atol=1e-4)
    assert ts.images[0].transform == pytest.approx(XF[:4] + [6.0, -3.0])  # shifts in binned px
    assert [im.enabled for im in ts.images] == [True, True, False, True]
    for key in ("odd_file", "even_file"):  # halves: their own mean and SD
        half = read_stack(getattr(ts.images[0], key))
        np.testing.assert_allclose(half.std(axis=(1, 2)), 1.0, atol=1e-5)


def test_int16_and_uint8_modes(project):
    store, pointer, views = project
    run = run_step(
        store, "normalize", {"mode": "int16", "scale": "mean_sd", "mean": 100.0, "sd": 1000.0}, {"input": pointer}
    )
    path = store.load(store.resolve(str(run.id))).items[0].images[0].file
    out = read_stack(path)
    assert _mode(path) == 1 and np.array_equal(out, np.round(out))
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 100.0, atol=0.05)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1000.0, rtol=1e-3)

    run = run_step(
        store, "normalize", {"mode": "uint8", "scale": "min_max", "min": 0.0, "max": 255.0}, {"input": pointer}
    )
    path = store.load(store.resolve(str(run.id))).items[0].images[0].file
    out = read_stack(path)
    assert _mode(path) == 6 and out.min() == 0 and out.max() == 255 and np.array_equal(out, np.round(out))
    v = views.astype(np.float64)  # one scaling for the whole stack
    diff = np.abs(out - np.round((v - v.min()) * 255.0 / (v.max() - v.min())))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 scaling: ties may round apart


def test_clipping_is_reported_and_bad_options_refused(project, tmp_path):
    store, pointer, _ = project
    report = RunReport()
    run_step(store, "normalize", {"mode": "uint8"}, {"input": pointer}, report=report)  # values 70-150 fit
    assert not report.warnings
    run_step(
        store,
        "normalize",
        {"mode": "uint8", "scale": "mean_sd", "mean": 0.0, "sd": 1.0},
        {"input": pointer},
        report=report,
    )
    text = " ".join(report.warnings)
    assert "keeps few grey levels" in text and "px clipped to the range of --mode uint8" in text
    with pytest.raises(InputError, match="--max must exceed --min"):
        run_step(store, "normalize", {"scale": "min_max", "min": 5.0, "max": 5.0}, {"input": pointer})
    result = CliRunner().invoke(
        build_cli(),
        [
            "normalize",
            "-p",
            str(tmp_path / "p"),
            "--input",
            pointer,
            "--mode",
            "uint8",
            "--scale",
            "min_max",
            "--max",
            "300",
        ],
    )
    assert result.exit_code == 2 and "outside the 0 to 255 that --mode uint8 holds" in result.output, result.output
    with pytest.raises(InputError, match="--binning 64"):
        run_step(store, "normalize", {"binning": 64}, {"input": pointer})
