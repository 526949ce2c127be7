"""Issue 12 item 2: after ``subset --restack`` every per-view file of every export describes exactly
the views of the exported stack, in its order — none of the parent set's dropped views."""

import json

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.core.transforms import geometry_to_xf
from tiltflow.io.aretomo import read_aln
from tiltflow.io.ctffind import read_ctffind
from tiltflow.io.imod import read_com, read_tlt, read_xf
from tiltflow.io.imod_defocus import read_defocus
from tiltflow.io.mrc import write_mrc
from tiltflow.io.warp import grid_values, read_warp_xml
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries
from tiltflow.workflow.store import ProjectStore

ANGLES = [-12.0, -9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0, 12.0]
ORDERS = [9, 7, 5, 3, 1, 2, 4, 6, 8]  # dose-symmetric acquisition
EXCLUDE = [1, 5]  # 1-based tilt positions: the first and the middle (0°) view
KEEP = [i for i in range(len(ANGLES)) if i + 1 not in EXCLUDE]
PIXEL, SHAPE = 2.5, (40, 48)


def _defocus_a(order: int) -> float:
    return 30000.0 + 100.0 * order


@pytest.fixture(scope="module")
def restacked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("restack")
    folder = tmp / "stacks"
    data = np.random.default_rng(0).normal(size=(len(ANGLES), *SHAPE)).astype(np.float32)
    data += 10.0 * np.arange(len(ANGLES), dtype=np.float32)[:, None, None]  # each section recognisable
    write_mrc(folder / "TS_01.st", data, voxel_size_a=PIXEL)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    store = ProjectStore(tmp / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 84.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    value = store.load(store.resolve(str(run.id)))
    ts = value.items[0]
    g = torch.Generator().manual_seed(1)
    xf = geometry_to_xf(
        84.0 + torch.rand(len(ANGLES), generator=g, dtype=torch.float64),
        torch.randn(len(ANGLES), 2, generator=g, dtype=torch.float64) * 4,
    )
    for i, im in enumerate(ts.images):
        im.acquisition_order = ORDERS[i]
        im.dose_prior_e_a2 = 3.0 * (ORDERS[i] - 1)
        im.transform = xf[i].tolist()
        im.refined_tilt_angle_deg = im.tilt_angle_deg + 0.3 + 0.01 * i
    store.add_output(run.id, "TiltSeries_2", value)
    ctf = CtfSeriesSet(
        [
            CtfTomoSeries(
                "TS_01",
                [
                    CtfTomo(o, a, _defocus_a(o), _defocus_a(o) - 800, 30.0 + o, 0.0, 9.0, 0.2)
                    for a, o in zip(ANGLES, ORDERS, strict=False)
                ],
            )
        ]
    )
    store.add_output(run.id, "CTFTomoSeries", ctf)
    result = CliRunner().invoke(
        build_cli(),
        [
            "subset",
            "-p",
            str(store.root),
            "--input",
            f"{run.id}.TiltSeries_2",
            "--exclude-views",
            "TS_01:" + ",".join(map(str, EXCLUDE)),
            "--restack",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    pointer = json.loads(result.output[result.output.index("{") :])["pointer"]
    sub = store.load(store.resolve(pointer)).items[0]
    assert [im.tilt_angle_deg for im in sub.images] == [ANGLES[i] for i in KEEP]  # the re-stack worked
    return {"store": store, "pointer": pointer, "data": data, "xf": xf, "tmp": tmp, "ts": ts}


def _export(r, fmt):
    out = r["tmp"] / fmt
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(r["store"].root), r["pointer"], "--format", fmt, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def _sections(path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data)


def _kept(values):
    return [values[i] for i in KEEP]


REFINED = [a + 0.3 + 0.01 * i for i, a in enumerate(ANGLES)]


def test_imod_per_view_files_match_the_stack(restacked):
    d = _export(restacked, "imod") / "TS_01"
    np.testing.assert_array_equal(_sections(d / "TS_01.st"), restacked["data"][KEEP])
    assert read_tlt(d / "TS_01.rawtlt").tolist() == _kept(ANGLES)
    assert read_tlt(d / "TS_01.tlt").tolist() == pytest.approx(_kept(REFINED), abs=1e-4)
    assert (read_xf(d / "TS_01.xf") - restacked["xf"][KEEP]).abs().max() < 1e-3
    ctf = read_ctffind(d / "TS_01_ctffind.txt")
    assert [r.defocus_1_a for r in ctf.rows] == pytest.approx([_defocus_a(o) for o in _kept(ORDERS)])
    entries = read_defocus(d / "TS_01.defocus").entries
    assert [(e.start_view, e.end_view) for e in entries] == [(k + 1, k + 1) for k in range(len(KEEP))]
    assert [e.start_tilt_deg for e in entries] == pytest.approx(_kept(ANGLES))
    assert [e.defocus_1_nm for e in entries] == pytest.approx([_defocus_a(o) / 10 for o in _kept(ORDERS)])
    tilt = {p.program: p for p in read_com(d / "tilt.com")}["tilt"]
    assert "EXCLUDELIST" not in tilt.options  # every view of the new stack is used


def test_relion_per_view_files_match_the_stack(restacked):
    out = _export(restacked, "relion")
    table = starfile.read(out / "tilt_series" / "TS_01.star")
    assert len(table) == len(KEEP)
    stack = _sections(out / "TS_01" / "TS_01.mrcs")
    assert stack.shape[0] == len(KEEP)
    for name, i in zip(table["rlnMicrographName"], KEEP, strict=False):
        section, _ = name.split("@")
        np.testing.assert_array_equal(stack[int(section) - 1], restacked["data"][i])
    assert table["rlnTomoNominalStageTiltAngle"].tolist() == _kept(ANGLES)
    assert table["rlnDefocusU"].tolist() == pytest.approx([_defocus_a(o) for o in _kept(ORDERS)])
    assert table["rlnMicrographPreExposure"].tolist() == [3.0 * (o - 1) for o in _kept(ORDERS)]


def test_warp_per_view_files_match_the_stack(restacked):
    out = _export(restacked, "warp")
    w = read_warp_xml(out / "warp_tiltseries" / "TS_01.xml")
    for key, values in w.per_tilt.items():
        assert len(values) == len(KEEP), key
    assert w.per_tilt["Angles"] == pytest.approx(_kept(REFINED), abs=1e-9)
    assert w.per_tilt["Dose"] == [3.0 * (o - 1) for o in _kept(ORDERS)]
    assert w.per_tilt["UseTilt"] == [True] * len(KEEP)
    grids = {el.tag: grid_values(el) for el in w.other}
    assert grids["GridCTF"] == pytest.approx([(_defocus_a(o) - 400) * 1e-4 for o in _kept(ORDERS)])
    star = starfile.read(out / "tomostar" / "TS_01.tomostar")
    assert star["wrpAngleTilt"].tolist() == _kept(ANGLES) and len(star["wrpDose"]) == len(KEEP)
    stack = out / "warp_tiltseries" / "tiltstack" / "TS_01"
    np.testing.assert_array_equal(_sections(stack / "TS_01.st"), restacked["data"][KEEP])
    assert read_tlt(stack / "TS_01.rawtlt").tolist() == _kept(ANGLES)
    assert read_tlt(stack / "TS_01.tlt").shape[0] == len(KEEP) and read_xf(stack / "TS_01.xf").shape[0] == len(KEEP)


def test_aretomo_per_view_files_match_the_stack(restacked):
    d = _export(restacked, "aretomo") / "TS_01"
    np.testing.assert_array_equal(_sections(d / "TS_01.mrc"), restacked["data"][KEEP])
    assert read_tlt(d / "TS_01.tlt").tolist() == _kept(ANGLES)
    aln = read_aln(d / "TS_01.aln")
    assert aln.RawSize == (SHAPE[1], SHAPE[0], len(KEEP)) and aln.DarkFrame == []
    assert aln.column("TILT").tolist() == pytest.approx(_kept(REFINED), abs=1e-5)


def test_ctffind_export_of_the_restacked_set(restacked):
    out = _export(restacked, "ctffind")
    ctf = read_ctffind(out / "TS_01_ctffind.txt")
    assert [r.defocus_1_a for r in ctf.rows] == pytest.approx([_defocus_a(o) for o in _kept(ORDERS)])


def test_subset_without_restack_keeps_every_section(restacked):
    """Not re-stacked: the stack keeps all views, so every per-view file does too (excluded views
    listed in EXCLUDELIST; a view the CTF set lacks gets the mean defocus)."""
    store, run_id = restacked["store"], int(restacked["pointer"].split(".")[0])
    result = CliRunner().invoke(
        build_cli(),
        [
            "subset",
            "-p",
            str(store.root),
            "--input",
            f"{run_id}.TiltSeries_2",
            "--exclude-views",
            "TS_01:" + ",".join(map(str, EXCLUDE)),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    pointer = json.loads(result.output[result.output.index("{") :])["pointer"]
    partial = CtfSeriesSet(
        [
            CtfTomoSeries(
                "TS_01",
                [CtfTomo(ORDERS[i], ANGLES[i], _defocus_a(ORDERS[i]), _defocus_a(ORDERS[i]), 0.0) for i in KEEP],
            )
        ]
    )
    ctf = store.add_output(run_id, "CTFTomoSeries_kept", partial)
    out = restacked["tmp"] / "imod_all"
    result = CliRunner().invoke(
        build_cli(),
        ["export", "-p", str(store.root), pointer, "--format", "imod", "--out", str(out), "--ctf", ctf.pointer],
    )
    assert result.exit_code == 0, result.output
    d = out / "TS_01"
    n = len(ANGLES)
    assert _sections(d / "TS_01.st").shape[0] == n
    assert read_tlt(d / "TS_01.rawtlt").tolist() == ANGLES and read_xf(d / "TS_01.xf").shape[0] == n
    entries = read_defocus(d / "TS_01.defocus").entries
    assert [e.start_tilt_deg for e in entries] == pytest.approx(ANGLES)
    assert len(read_ctffind(d / "TS_01_ctffind.txt").rows) == n
    assert read_com(d / "tilt.com")[0].options["EXCLUDELIST"] == ",".join(map(str, EXCLUDE))
