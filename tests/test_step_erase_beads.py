"""The erase-beads step: beads of the alignment's model (or detected) erased, their discs within the
noise of their surroundings, no pixel outside the discs changed."""

import math
import shutil

import numpy as np
import pytest
import torch

from tiltflow.core.bead_erase import beads_in_views, erase_beads
from tiltflow.core.geometry import project_points, xf_from_geometry
from tiltflow.io.imod import FidXyz, write_fid_xyz
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

NY, NX, PIXEL_A, BEAD_NM = 160, 192, 5.0, 5.0  # beads of 10 px
ANGLES = [-30.0, -15.0, 0.0, 15.0, 30.0]
REFINED = [a + 0.7 for a in ANGLES]  # what the alignment solved
AXIS = 10.0
XYZ = torch.tensor(
    [[-50, -40, 10], [30, -45, -15], [45, 20, 5], [-20, 35, 0], [5, 0, -10], [-10, 55, 12]], dtype=torch.float64
)
XYZ = XYZ - XYZ.mean(0)  # the align step's model: centroid at 0
SHIFTS = torch.tensor([[4.0, -3.0], [-6.0, 2.5], [0.0, 0.0], [3.5, 5.0], [-2.0, -7.0]], dtype=torch.float64)
RADIUS = BEAD_NM * 10 / PIXEL_A / 2 + 1.0  # bead radius + the default --expand 1


def true_positions() -> torch.Tensor:  # (t, n, 2) raw px
    return project_points(
        XYZ, tilt_angles_deg=torch.tensor(REFINED), tilt_axis_deg=AXIS, shifts_px=SHIFTS, image_shape=(NY, NX)
    )


def render(rng, offset=100.0) -> np.ndarray:
    """Noise (SD 4) on a slope, with dark projected spheres of 5 px radius at the true positions."""
    y, x = np.mgrid[0:NY, 0:NX].astype(np.float64)
    pos = true_positions().numpy()
    views = []
    for v in range(len(ANGLES)):
        img = offset + 0.2 * x + rng.normal(0, 4.0, (NY, NX))
        for bx, by in pos[v]:
            r2 = (x - bx) ** 2 + (y - by) ** 2
            img -= 12.0 * np.sqrt(np.clip(25.0 - r2, 0, None))  # up to 60 darker
        views.append(img)
    return np.stack(views).astype(np.float32)


def test_beads_in_views_is_the_projection():
    xf = xf_from_geometry(AXIS, SHIFTS)
    got = beads_in_views(XYZ, REFINED, xf, (NY, NX))
    np.testing.assert_allclose(got.transpose(0, 1).numpy(), true_positions().numpy(), atol=1e-9)


def test_erase_core_fills_discs_only():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.normal(50.0, 3.0, (64, 64)))
    img[20:31, 20:31] -= 40.0
    erased, mask = erase_beads(img, torch.tensor([[25.0, 25.0]]), 7.5, generator=torch.Generator().manual_seed(0))
    assert bool((erased[~mask] == img[~mask]).all()) and int(mask.sum()) == 177  # pi 7.5^2 ~ 177 px
    assert abs(float(erased[mask].mean()) - 50.0) < 1.5 and abs(float(erased[mask].std()) - 3.0) < 1.0


@pytest.fixture
def project(tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "stacks"
    stacks = {"": render(rng), "_odd": render(rng, 50.0), "_even": render(rng, 50.0)}
    for suffix, data in stacks.items():
        write_mrc(folder / f"TS_01{suffix}.st", data, voxel_size_a=PIXEL_A)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    write_fid_xyz(
        folder / "TS_01fid.xyz",
        FidXyz(torch.arange(1, 7), XYZ, torch.ones(6), torch.arange(1, 7), pixel_size_a=PIXEL_A, image_size=(NX, NY)),
    )
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
        },
    )
    value = store.load(store.resolve(str(imp.id)))
    ts = value.items[0]
    store.add_output(imp.id, "TiltSeries_plain", value)
    for im, row, refined in zip(ts.images, xf_from_geometry(AXIS, SHIFTS).tolist(), REFINED, strict=False):
        im.transform, im.refined_tilt_angle_deg = row, refined
        im.odd_file, im.even_file = str(folder / "TS_01_odd.st"), str(folder / "TS_01_even.st")
    ts.images[3].enabled, ts.images[3].transform = False, None  # excluded when aligned: left as it is
    ts.alignment = {
        "method": "fiducial",
        "fid_xyz": str(folder / "TS_01fid.xyz"),
        "verdict": {"status": "good", "reasons": []},
    }
    store.add_output(imp.id, "TiltSeries_aligned", value)
    return store, imp.id, stacks


def _within(radius: float) -> np.ndarray:
    """(t, NY, NX) pixels within ``radius`` of a true bead centre."""
    y, x = np.mgrid[0:NY, 0:NX]
    pos = true_positions().numpy()
    return np.stack([np.any([(x - bx) ** 2 + (y - by) ** 2 <= radius**2 for bx, by in p], axis=0) for p in pos])


def test_model_beads_erased_within_surrounding_noise(project):
    store, run_id, stacks = project
    run = run_step(store, "erase-beads", {"bead_diameter_nm": BEAD_NM}, {"input": f"{run_id}.TiltSeries_aligned"})
    ts = store.load(store.resolve(str(run.id))).items[0]
    before, inside, outside = stacks[""], _within(RADIUS - 0.05), ~_within(RADIUS + 0.05)
    y, x = np.mgrid[0:NY, 0:NX]
    for key, suffix in (("file", ""), ("odd_file", "_odd"), ("even_file", "_even")):
        after, before = read_stack(getattr(ts.images[0], key)), stacks[suffix]
        assert np.array_equal(after[outside], before[outside]), key  # nothing else changed
        assert np.array_equal(after[3], before[3])  # the excluded view
        for v in (0, 1, 2, 4):
            assert (after[v][inside[v]] != before[v][inside[v]]).all()
            for bx, by in true_positions()[v].tolist():
                r = np.hypot(x - bx, y - by)
                disc, ring = after[v][r <= RADIUS - 0.5], before[v][(r > RADIUS + 1) & (r <= RADIUS + 4)]
                assert (before[v][r <= 3].mean() - ring.mean()) / ring.std() < -5  # a bead was there
                assert abs(disc.mean() - ring.mean()) < 4 * ring.std() / math.sqrt(disc.size), (key, v, bx, by)
                assert 0.6 < disc.std() / ring.std() < 1.5
    assert [im.attrs["beads_erased"] for im in ts.images] == [6, 6, 6, 0, 6]
    rows = np.loadtxt(ts.attrs["beads_erased"]["positions_file"], ndmin=2)
    assert rows.shape == (24, 4) and set(rows[:, 0].astype(int)) == {0, 1, 2, 4}


def test_detected_beads_and_refusals(project):
    store, run_id, stacks = project
    with pytest.raises(InputError, match="no bead model"):
        run_step(store, "erase-beads", {"bead_diameter_nm": BEAD_NM}, {"input": f"{run_id}.TiltSeries_plain"})
    with pytest.raises(InputError, match="pass --bead-diameter-nm"):
        run_step(store, "erase-beads", {}, {"input": f"{run_id}.TiltSeries_aligned"})
    run = run_step(
        store, "erase-beads", {"bead_diameter_nm": BEAD_NM, "detect": True}, {"input": f"{run_id}.TiltSeries_plain"}
    )
    ts = store.load(store.resolve(str(run.id))).items[0]
    after, before = read_stack(ts.images[0].file), stacks[""]
    changed = after != before
    assert not changed[~_within(RADIUS + 1.0)].any()  # detected centres within a pixel of the truth
    assert changed[_within(RADIUS - 1.0)].all()
    assert [im.attrs["beads_erased"] for im in ts.images] == [6] * 5


def test_bead_diameter_from_the_align_run(project):
    store, run_id, _ = project
    align = store.create_run("align", {"bead_diameter_nm": BEAD_NM}, {"input": str(run_id)})
    model = store.root / align.run_dir / "TS_01fid.xyz"  # the model where align writes it
    value = store.load(store.resolve(f"{run_id}.TiltSeries_aligned"))
    shutil.copy(value.items[0].alignment["fid_xyz"], model)
    value.items[0].alignment["fid_xyz"] = str(model)
    store.add_output(run_id, "TiltSeries_from_run", value)
    run = run_step(store, "erase-beads", {}, {"input": f"{run_id}.TiltSeries_from_run"})
    ts = store.load(store.resolve(str(run.id))).items[0]
    assert ts.attrs["beads_erased"]["bead_diameter_nm"] == BEAD_NM
    assert [im.attrs["beads_erased"] for im in ts.images] == [6, 6, 6, 0, 6]
