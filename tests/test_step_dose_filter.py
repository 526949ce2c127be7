"""The dose-filter step: every view equals the analytic exposure filter (Grant & Grigorieff 2015,
written out here, not imported) at its dose, odd/even stacks too; one-line refusals before work."""

import math

import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

PIXEL_A, NY, NX = 2.0, 48, 64
ANGLES = [-6, -3, 0, 3, 6]
ORDERS = [5, 3, 1, 2, 4]  # dose-symmetric: 0° first (the stack is in tilt order)
WAVES = [(3, 0, 1.0), (0, 5, 0.7), (13, 9, 0.4)]  # (cycles across x, cycles across y, amplitude)


def critical_exposure(k_per_a: float, kv: float) -> float:
    """Ne(k) = 0.245 k^-1.665 + 2.81 e/Å² at 300 kV, times 0.8 at 200 kV (Grant & Grigorieff 2015, Fig. 2)."""
    return (0.245 * k_per_a**-1.665 + 2.81) * (0.8 if kv == 200 else 1.0)


def waves_image(scale: float = 1.0, offset: float = 10.0, dose=None, kv=300.0) -> np.ndarray:
    """A constant plus plane waves; with ``dose`` each wave attenuated by exp(-N / (2 Ne(k)))."""
    y, x = np.mgrid[0:NY, 0:NX].astype(np.float64)
    img = np.full((NY, NX), offset)
    for cx, cy, amp in WAVES:
        k = math.hypot(cx / NX, cy / NY) / PIXEL_A
        att = 1.0 if dose is None else math.exp(-dose / (2 * critical_exposure(k, kv)))
        img += scale * amp * att * np.cos(2 * np.pi * (cx * x / NX + cy * y / NY))
    return img


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", np.stack([waves_image() for _ in ANGLES]).astype(np.float32), voxel_size_a=PIXEL_A)
    write_mrc(
        folder / "TS_01_odd.st",
        np.stack([waves_image(0.5, 5.0) for _ in ANGLES]).astype(np.float32),
        voxel_size_a=PIXEL_A,
    )
    write_mrc(
        folder / "TS_01_even.st",
        np.stack([waves_image(0.25, 5.0) for _ in ANGLES]).astype(np.float32),
        voxel_size_a=PIXEL_A,
    )
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    store = ProjectStore(tmp_path / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "TS_01.st", "voltage_kv": 300, "tilt_axis_deg": 0.0, "pixel_size_a": PIXEL_A},
    )
    value = store.load(store.resolve(str(imp.id)))
    for im, order in zip(value.items[0].images, ORDERS, strict=False):  # doses as an mdoc gives them
        im.acquisition_order, im.dose_e_a2 = order, 4.0
        im.dose_prior_e_a2, im.dose_accumulated_e_a2 = 4.0 * (order - 1), 4.0 * order
        im.odd_file, im.even_file = str(folder / "TS_01_odd.st"), str(folder / "TS_01_even.st")
    value.items[0].images[1].enabled = False  # a flag that must pass through
    value.odd_even = True
    store.add_output(imp.id, "TiltSeries_doses", value)
    return store, f"{imp.id}.TiltSeries_doses"


def test_views_equal_the_analytic_exposure_filter(project):
    store, pointer = project
    run = run_step(store, "dose-filter", {}, {"input": pointer})
    ts = store.load(store.resolve(str(run.id))).items[0]
    assert [im.tilt_angle_deg for im in ts.images] == ANGLES
    assert [im.enabled for im in ts.images] == [True, False, True, True, True]
    assert [im.dose_accumulated_e_a2 for im in ts.images] == [4.0 * o for o in ORDERS]  # doses kept
    for key, scale, offset in (("file", 1.0, 10.0), ("odd_file", 0.5, 5.0), ("even_file", 0.25, 5.0)):
        got = read_stack(getattr(ts.images[0], key))
        for v, order in enumerate(ORDERS):  # exposure = accumulated dose after the view (mtffilter)
            want = waves_image(scale, offset, dose=4.0 * order)
            np.testing.assert_allclose(got[v], want, atol=2e-5 * scale, err_msg=f"{key} view {v}")
    assert [im.attrs["dose_filter_exposure_e_a2"] for im in ts.images] == [4.0 * o for o in ORDERS]
    out = store.load(store.resolve(str(run.id)))
    assert out.attrs["dose_filtered"] == "exposure" and out.odd_even


def test_fixed_dose_mid_exposure_and_voltage(project):
    store, pointer = project
    run = run_step(
        store,
        "dose-filter",
        {"dose_per_tilt_e_a2": 3.0, "initial_dose_e_a2": 1.0, "voltage_kv": 200, "mode": "mid_exposure"},
        {"input": pointer},
    )
    got = read_stack(store.load(store.resolve(str(run.id))).items[0].images[0].file)
    for v, order in enumerate(ORDERS):  # 1 + 3 (order - 1) before the view, + 1.5 to its middle
        np.testing.assert_allclose(got[v], waves_image(dose=1.0 + 3.0 * (order - 1) + 1.5, kv=200), atol=2e-5)


def test_refusals_before_work(project, tmp_path):
    store, pointer = project
    value = store.load(store.resolve(pointer))
    for im in value.items[0].images:
        im.dose_e_a2 = im.dose_prior_e_a2 = im.dose_accumulated_e_a2 = None
    run_id = int(pointer.split(".")[0])
    store.add_output(run_id, "TiltSeries_nodose", value)
    n_runs = len(store.runs())
    with pytest.raises(InputError, match="has no dose — pass --dose"):
        run_step(store, "dose-filter", {}, {"input": f"{run_id}.TiltSeries_nodose"})
    value.items[0].acquisition.voltage_kv = 120.0
    store.add_output(run_id, "TiltSeries_120kv", value)
    with pytest.raises(InputError, match="120 kV"):
        run_step(store, "dose-filter", {"dose_per_tilt_e_a2": 3.0}, {"input": f"{run_id}.TiltSeries_120kv"})
    assert len(store.runs()) == n_runs  # nothing registered
    result = CliRunner().invoke(
        build_cli(), ["dose-filter", "-p", str(tmp_path / "p"), "--input", pointer, "--voltage", "100"]
    )
    assert result.exit_code == 2 and "--voltage 100: must be at least 200" in result.output, result.output
