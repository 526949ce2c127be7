"""Issue 12 items 13 and 15: the IMOD export in IMOD's own conventions — ``tilt.com`` with the
run's thickness and binning and no ``LOG`` for float images, ``fid.xyz`` with a corner origin as
tiltalign writes it, the ``.fid`` renumbered to the exported stack, the ``.com`` files of a
reconstruct run — and a header label naming tiltflow, its version and the run on every MRC."""

import re

import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiltflow import __version__
from tiltflow.cli.main import build_cli
from tiltflow.core.geometry import project_points
from tiltflow.core.transforms import geometry_to_xf
from tiltflow.io.imod import FidXyz, fiducial_model, read_com, read_fid_xyz, read_mod, write_fid_xyz, write_mod
from tiltflow.io.mrc import write_mrc
from tiltflow.workflow.curation import save_subset
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries
from tiltflow.workflow.store import ProjectStore

ANGLES = [-12.0, -6.0, 0.0, 6.0, 12.0]
PIXEL = 2.5
SHAPE = (40, 48)  # (ny, nx)
AXIS = 84.0


def _project(tmp_path, data, axis=AXIS):
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", data, voxel_size_a=PIXEL)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": axis,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    return store, run


def _aligned(store, run, shifts):
    value = store.load(store.resolve(str(run.id)))
    xf = geometry_to_xf(torch.full((len(ANGLES),), AXIS, dtype=torch.float64), shifts)
    for i, im in enumerate(value.items[0].images):
        im.transform = xf[i].tolist()
    return value, xf


def _export(store, pointer, fmt, out, *extra):
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), pointer, "--format", fmt, "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def float_series(tmp_path):
    data = np.random.default_rng(0).normal(size=(len(ANGLES), *SHAPE)).astype(np.float32)  # centred on zero
    store, run = _project(tmp_path, data)
    value, xf = _aligned(store, run, torch.zeros(len(ANGLES), 2, dtype=torch.float64))
    out = store.add_output(run.id, "TiltSeries_2", value)
    return store, out.pointer


def test_tilt_com_has_no_log_for_float_images(float_series, tmp_path):
    store, pointer = float_series
    _export(store, pointer, "imod", tmp_path / "imod")
    tilt = read_com(tmp_path / "imod" / "TS_01" / "tilt.com")[0]
    assert "LOG" not in tilt.options
    nx, ny = SHAPE[1], SHAPE[0]
    assert tilt.options["THICKNESS"] != str(min(nx, ny) // 4)
    assert tilt.options["THICKNESS"] == str(round(2000 / PIXEL))  # reconstruct's default, 200 nm


def test_tilt_com_takes_the_log_of_counts(tmp_path):
    counts = np.random.default_rng(1).poisson(20.0, size=(len(ANGLES), *SHAPE)).astype(np.int16) + 1
    store, run = _project(tmp_path, counts)
    value, _ = _aligned(store, run, torch.zeros(len(ANGLES), 2, dtype=torch.float64))
    out = store.add_output(run.id, "TiltSeries_2", value)
    _export(store, out.pointer, "imod", tmp_path / "imod")
    assert read_com(tmp_path / "imod" / "TS_01" / "tilt.com")[0].options["LOG"] == "0.0"


def test_reconstruct_export_carries_the_runs_com_files(float_series, tmp_path):
    store, pointer = float_series
    rec = run_step(
        store,
        "reconstruct",
        {"binning": 2, "thickness_nm": 6.0, "radial_cutoff": 0.3, "radial_falloff": 0.05, "z_offset_nm": 1.0},
        {"input": pointer},
    )
    tomo = store.load(store.resolve(str(rec.id))).items[0]
    nz = tomo.shape[0]
    assert nz == round(60 / (PIXEL * 2))
    _export(store, str(rec.id), "imod", tmp_path / "imod")
    d = tmp_path / "imod" / "TS_01"
    for name in ("TS_01.st", "TS_01.tlt", "TS_01.xf", "newst.com", "tilt.com", "TS_01_rec.mrc"):
        assert (d / name).is_file(), name
    newst = read_com(d / "newst.com")[0].options
    assert newst["BinByFactor"] == "2"
    tilt = read_com(d / "tilt.com")[0].options
    assert tilt["IMAGEBINNED"] == "2"
    assert tilt["THICKNESS"] == str(nz * 2)  # unbinned px, as etomo writes it
    assert tilt["RADIAL"] == "0.3 0.05" and "LOG" not in tilt
    assert tilt["SHIFT"].split()[1] == f"{-10.0 / PIXEL:.1f}"  # specimen z at the centre: SHIFT z = -offset
    assert tilt["InputProjections"] == "TS_01.ali" and newst["OutputFile"] == "TS_01.ali"


def test_phase_flipped_reconstruction_exports_ctfcorrection_com(float_series, tmp_path):
    store, pointer = float_series
    run_id = int(pointer.split(".")[0])
    ctf = CtfSeriesSet(
        [CtfTomoSeries("TS_01", [CtfTomo(i + 1, a, 20000.0, 19000.0, 10.0) for i, a in enumerate(ANGLES)])]
    )
    ctf_out = store.add_output(run_id, "CTFTomoSeries", ctf)
    rec = run_step(
        store,
        "reconstruct",
        {"binning": 2, "thickness_nm": 6.0, "ctf_correct": "phaseflip", "ctf_defocus_tol_nm": 100.0},
        {"input": pointer, "ctf": ctf_out.pointer},
    )
    _export(store, str(rec.id), "imod", tmp_path / "imod")
    d = tmp_path / "imod" / "TS_01"
    flip = read_com(d / "ctfcorrection.com")[0].options
    assert flip["DefocusFile"] == "TS_01.defocus" and (d / "TS_01.defocus").is_file()
    assert flip["PixelSize"] == f"{PIXEL * 2 / 10:g}" and flip["DefocusTol"] == "100"
    assert read_com(d / "tilt.com")[0].options["InputProjections"] == flip["OutputFileName"]


def _fiducial_alignment(store, run, tmp_path, beads_xyz, shifts):
    """An alignment as the align step records it: a .fid (z = index among the views aligned) and a
    fid.xyz with the bead centroid at zero."""
    value, xf = _aligned(store, run, shifts)
    ts = value.items[0]
    raw = project_points(
        beads_xyz, tilt_angles_deg=torch.tensor(ANGLES), tilt_axis_deg=AXIS, shifts_px=shifts, image_shape=SHAPE
    )  # (t, n, 2)
    contours = [
        torch.cat([raw[:, b], torch.arange(len(ANGLES), dtype=torch.float64)[:, None]], 1)
        for b in range(beads_xyz.shape[0])
    ]
    fid = tmp_path / "TS_01.fid"
    write_mod(fid, fiducial_model(contours, image_shape=SHAPE, n_views=len(ANGLES), pixel_size_a=PIXEL))
    n = beads_xyz.shape[0]
    xyz = tmp_path / "TS_01fid.xyz"
    write_fid_xyz(
        xyz,
        FidXyz(torch.arange(1, n + 1), beads_xyz, torch.ones(n), torch.arange(1, n + 1), PIXEL, (SHAPE[1], SHAPE[0])),
    )
    ts.alignment = {
        "method": "fiducial",
        "fid": str(fid),
        "fid_xyz": str(xyz),
        "view_orders": [im.acquisition_order for im in ts.images],
    }
    return value, xf


@pytest.fixture
def fiducial(tmp_path):
    data = np.random.default_rng(2).normal(size=(len(ANGLES), *SHAPE)).astype(np.float32)
    store, run = _project(tmp_path, data)
    beads = torch.tensor([[-8.0, 5.0, 3.0], [6.0, -9.0, -4.0], [2.0, 4.0, 1.0]], dtype=torch.float64)
    beads = beads - beads.mean(0)
    shifts = torch.tensor([[1.0, -2.0], [0.5, 0.3], [0.0, 0.0], [-1.2, 0.8], [2.0, 1.0]], dtype=torch.float64)
    value, xf = _fiducial_alignment(store, run, tmp_path, beads, shifts)
    out = store.add_output(run.id, "TiltSeries_2", value)
    return store, out, beads, xf


def test_fid_xyz_in_imods_convention(fiducial, tmp_path):
    store, out, beads, xf = fiducial
    _export(store, out.pointer, "imod", tmp_path / "imod")
    got = read_fid_xyz(tmp_path / "imod" / "TS_01" / "TS_01fid.xyz")
    nx, ny = SHAPE[1], SHAPE[0]
    assert got.image_size == (nx, ny) and got.pixel_size_a == pytest.approx(PIXEL)
    expected = beads.clone()
    expected[:, 0] += nx / 2
    expected[:, 1] += ny / 2
    assert (got.xyz - expected).abs().max() < 0.01  # written with 2 decimals
    # the meaning: at 0° a bead lies in the aligned image at (X, Y) in IMOD model coordinates (pixel
    # centres at index + 0.5); z is its height above the tilt axis
    zero = ANGLES.index(0.0)
    raw = project_points(
        beads,
        tilt_angles_deg=torch.tensor([0.0]),
        tilt_axis_deg=AXIS,
        shifts_px=torch.tensor([[0.0, 0.0]], dtype=torch.float64),
        image_shape=SHAPE,
    )[0]
    a = xf[zero, :4].reshape(2, 2)
    centre = torch.tensor([(nx - 1) / 2, (ny - 1) / 2], dtype=torch.float64)
    aligned = (raw - centre) @ a.T + xf[zero, 4:] + centre  # 0-based pixel index
    assert (got.xyz[:, :2] - (aligned + 0.5)).abs().max() < 0.01


def test_fid_xyz_layout_matches_tiltalign(fiducial, tmp_path, corpus):
    store, out, *_ = fiducial
    _export(store, out.pointer, "imod", tmp_path / "imod")
    ours = (tmp_path / "imod" / "TS_01" / "TS_01fid.xyz").read_text().splitlines()[0]
    theirs = (corpus / "imod" / "IMOD_BB_tutorial" / "BBafid.xyz").read_text().splitlines()[0]
    number = r"[ \d.-]{9}\d"  # f10.2
    layout = re.compile(
        rf"^[ \d]{{3}}\d{number}{number}{number}[ \d]{{6}}\d[ \d]{{4}}\d Pix:[ \d.]{{12}} Dim:[ \d]{{12}}$"
    )
    assert layout.match(theirs) and layout.match(ours), (theirs, ours)


def test_fid_follows_the_restacked_views(fiducial, tmp_path):
    store, out, beads, _ = fiducial
    value = store.load(out)
    drop = value.items[0].images[1].acquisition_order  # the second view in tilt order
    restacked = save_subset(store, out, restack=True, flags={("TS_01", drop): True})
    _export(store, restacked.pointer, "imod", tmp_path / "imod")
    model = read_mod(tmp_path / "imod" / "TS_01" / "TS_01.fid")
    original = read_mod(store.load(out).items[0].alignment["fid"])
    assert model.header["zmax"] == len(ANGLES) - 1
    for c, before in zip(model.objects[0].contours, original.objects[0].contours, strict=False):
        assert c.points[:, 2].tolist() == [0.0, 1.0, 2.0, 3.0]  # sections of the 4-view stack
        kept = before.points[[0, 2, 3, 4]]
        assert torch.allclose(c.points[:, :2], kept[:, :2] + 0.5)  # IMOD model coordinates


def _labels(path):
    with mrcfile.open(path, header_only=True, permissive=True) as mrc:
        return [str(v) for v in mrc.get_labels()]


@pytest.mark.parametrize("fmt", ["imod", "relion", "warp", "aretomo"])
def test_every_exported_mrc_names_tiltflow_and_the_run(float_series, tmp_path, fmt):
    store, pointer = float_series
    rec = run_step(store, "reconstruct", {"binning": 2, "thickness_nm": 6.0}, {"input": pointer})
    out = tmp_path / fmt
    _export(store, str(rec.id), fmt, out)
    mrcs = [p for p in out.rglob("*") if p.suffix in (".mrc", ".mrcs", ".st")]
    if fmt in ("imod", "relion"):  # these carry the tomogram too
        assert any(p.name.endswith("_rec.mrc") or p.name.startswith("rec_") for p in mrcs), mrcs
    assert mrcs
    for path in mrcs:
        labels = _labels(path)
        assert any(f"tiltflow {__version__}" in lab and f"run {rec.id} reconstruct" in lab for lab in labels), (
            path,
            labels,
        )
        assert all(len(lab) <= 80 for lab in labels)
