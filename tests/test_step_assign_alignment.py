"""The assign-alignment step: an alignment given to the binned, even/odd or dose-filtered stacks of the
same series gives the same geometry (the same tomograms); mismatches refused with one line."""

import numpy as np
import pytest
import torch

from tiltflow.core.geometry import project_points, xf_from_geometry
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

NY, NX, PIXEL_A = 96, 128, 4.0
ANGLES = [-40.0, -20.0, 0.0, 20.0, 40.0]
REFINED = [a + 0.5 for a in ANGLES]
AXIS, REFINED_AXIS = 8.0, 8.6
XYZ = torch.tensor([[-30, -20, 8], [25, -10, -6], [10, 25, 4], [-8, 5, -10]], dtype=torch.float64)
SHIFTS = torch.tensor([[3.0, -2.0], [-4.0, 1.5], [0.0, 0.0], [2.5, 3.0], [-1.0, -4.0]], dtype=torch.float64)


def render(amplitude: float) -> np.ndarray:
    """Smooth dark blobs (sigma 3 px) at the projected positions, on a constant background."""
    pos = project_points(
        XYZ, tilt_angles_deg=torch.tensor(REFINED), tilt_axis_deg=REFINED_AXIS, shifts_px=SHIFTS, image_shape=(NY, NX)
    ).numpy()
    y, x = np.mgrid[0:NY, 0:NX].astype(np.float64)
    return np.stack(
        [50.0 - amplitude * sum(np.exp(-((x - bx) ** 2 + (y - by) ** 2) / 18.0) for bx, by in p) for p in pos]
    ).astype(np.float32)


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "stacks"
    for suffix, amp in (("", 20.0), ("_odd", 9.0), ("_even", 11.0)):
        write_mrc(folder / f"TS_01{suffix}.st", render(amp), voxel_size_a=PIXEL_A)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    store = ProjectStore(tmp_path / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "TS_01.st",
            "voltage_kv": 300,
            "tilt_axis_deg": AXIS,
            "pixel_size_a": PIXEL_A,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    value = store.load(store.resolve(str(imp.id)))
    for im in value.items[0].images:
        im.odd_file, im.even_file = str(folder / "TS_01_odd.st"), str(folder / "TS_01_even.st")
    value.odd_even = True
    store.add_output(imp.id, "TiltSeries_oe", value)
    ts = value.items[0]  # what align would give: transforms, angles, axis, verdict
    for im, row, refined in zip(ts.images, xf_from_geometry(REFINED_AXIS, SHIFTS).tolist(), REFINED, strict=False):
        im.transform, im.refined_tilt_angle_deg, im.residual_px = row, refined, 0.3
    ts.images[4].transform, ts.images[4].enabled = None, False  # left out of the alignment
    ts.acquisition.tilt_axis_deg = REFINED_AXIS
    ts.alignment = {"method": "fiducial", "verdict": {"status": "good", "reasons": []}}
    value.attrs["aligned"] = "fiducial"
    store.add_output(imp.id, "TiltSeries_aligned", value)
    return store, imp.id


def _tomograms(store, run_id):
    tomo = store.load(store.resolve(str(run_id))).items[0]
    return [read_stack(tomo.file), read_stack(tomo.odd_file), read_stack(tomo.even_file)]


def test_binned_and_dose_filtered_stacks_get_the_same_geometry(project):
    store, imp = project
    aligned = f"{imp}.TiltSeries_aligned"
    binned = run_step(store, "normalize", {"binning": 2}, {"input": f"{imp}.TiltSeries_oe"})
    report = RunReport()
    assigned = run_step(store, "assign-alignment", {}, {"input": str(binned.id), "alignment": aligned}, report=report)
    ts = store.load(store.resolve(str(assigned.id))).items[0]
    src = store.load(store.resolve(aligned)).items[0]
    assert ts.acquisition.tilt_axis_deg == REFINED_AXIS and ts.acquisition.pixel_size_a == 2 * PIXEL_A
    for im, a in zip(ts.images, src.images, strict=False):
        if a.transform is None:
            assert im.transform is None and not im.enabled
            continue
        assert im.transform == pytest.approx(a.transform[:4] + [a.transform[4] / 2, a.transform[5] / 2])
        assert im.refined_tilt_angle_deg == a.refined_tilt_angle_deg
    assert ts.alignment["verdict"]["status"] == "good"
    assert "1 views excluded: the alignment left them out" in " ".join(report.notes)
    # the same tomograms: align at binning 2 == binned stacks with the assigned alignment at binning 1
    rec = {"method": "wbp", "thickness_px": 16, "even_odd": True, "hamming_start": 0.1}  # tomo3d-style WBP
    ref = _tomograms(store, run_step(store, "reconstruct", {**rec, "binning": 2}, {"input": aligned}).id)
    got = _tomograms(store, run_step(store, "reconstruct", {**rec, "binning": 1}, {"input": str(assigned.id)}).id)
    for r, g in zip(ref, got, strict=False):
        assert r.shape == g.shape
        assert np.abs(r - g).max() < 1e-3 * np.abs(r).max()

    filtered = run_step(store, "dose-filter", {}, {"input": f"{imp}.TiltSeries_oe"})
    same = run_step(store, "assign-alignment", {}, {"input": str(filtered.id), "alignment": aligned})
    out = store.load(store.resolve(str(same.id))).items[0]
    assert [im.transform for im in out.images] == [im.transform for im in src.images]
    assert out.images[0].odd_file != src.images[0].odd_file  # the filtered halves, now aligned


def test_mismatches_refused_in_one_line(project):
    store, imp = project
    aligned, plain = f"{imp}.TiltSeries_aligned", f"{imp}.TiltSeries_oe"
    with pytest.raises(InputError, match="TS_01 carries no alignment"):
        run_step(store, "assign-alignment", {}, {"input": plain, "alignment": plain})
    value = store.load(store.resolve(plain))
    value.items[0].ts_id = "TS_02"
    store.add_output(imp, "TiltSeries_other", value)
    with pytest.raises(InputError, match=r"no tilt series TS_02 \(it holds TS_01\)"):
        run_step(store, "assign-alignment", {}, {"input": f"{imp}.TiltSeries_other", "alignment": aligned})
    value = store.load(store.resolve(plain))
    value.items[0].images[2].acquisition_order = 99
    store.add_output(imp, "TiltSeries_order", value)
    with pytest.raises(InputError, match="acquisition order 99.*is not in the alignment's series"):
        run_step(store, "assign-alignment", {}, {"input": f"{imp}.TiltSeries_order", "alignment": aligned})
    value = store.load(store.resolve(plain))
    value.items[0].size = (NX // 2, NY)
    store.add_output(imp, "TiltSeries_cropped", value)
    with pytest.raises(InputError, match="not the same field of view"):
        run_step(store, "assign-alignment", {}, {"input": f"{imp}.TiltSeries_cropped", "alignment": aligned})
