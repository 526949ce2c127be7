"""``tiltflow export --format relion|warp|aretomo``: files read back by starfile, mrcfile and our
own readers with the set's geometry; RELION's projection model from the written columns equals ours."""

import math

import mrcfile
import numpy as np
import pytest
import starfile
import torch
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.core.alignment_convert import warp_to_xf, xf_point_difference_px
from tiltflow.core.geometry import project_points
from tiltflow.core.transforms import geometry_to_xf, relion_rotation_matrices, relion_to_xf
from tiltflow.io.aretomo import read_aln
from tiltflow.io.imod import read_tlt, read_xf
from tiltflow.io.mrc import write_mrc
from tiltflow.io.warp import grid_values, read_warp_xml
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries
from tiltflow.workflow.store import ProjectStore

ANGLES = [-9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0]
PIXEL = 2.5
SHAPE = (40, 48)  # (ny, nx); even sizes, where IMOD's and RELION's centres differ by 0.5 px


@pytest.fixture
def aligned(tmp_path):
    folder = tmp_path / "stacks"
    data = np.random.default_rng(0).normal(size=(7, *SHAPE)).astype(np.float32)
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
            "cs_mm": 2.7,
            "amplitude_contrast": 0.07,
            "tilt_axis_deg": 84.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    value = store.load(store.resolve(str(run.id)))
    g = torch.Generator().manual_seed(1)
    axis = 84.0 + torch.rand(7, generator=g, dtype=torch.float64)
    shifts = torch.randn(7, 2, generator=g, dtype=torch.float64) * 5
    xf = geometry_to_xf(axis, shifts)
    ts = value.items[0]
    for i, im in enumerate(ts.images):
        im.transform = xf[i].tolist()
        im.refined_tilt_angle_deg = im.tilt_angle_deg + 0.4 + 0.01 * i
    ts.images[5].enabled = False
    ts.images[5].transform = None  # as align leaves a view excluded before it
    store.add_output(run.id, "TiltSeries_2", value)
    ctf = CtfSeriesSet(
        [
            CtfTomoSeries(
                "TS_01",
                [
                    CtfTomo(
                        im.acquisition_order,
                        im.tilt_angle_deg,
                        30000 + 10 * i,
                        29000 + 10 * i,
                        20.0 + i,
                        0.0,
                        8.0 + i,
                        0.2,
                    )
                    for i, im in enumerate(ts.images)
                ],
            )
        ]
    )
    store.add_output(run.id, "CTFTomoSeries", ctf)
    return store, f"{run.id}.TiltSeries_2", data, ts, xf, axis, shifts


def _export(store, pointer, fmt, out):
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), pointer, "--format", fmt, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return result.output


def _valid(path) -> bool:
    with open("/dev/null", "w") as sink:
        return mrcfile.validate(str(path), print_file=sink)


def test_relion_export(aligned, tmp_path):
    store, pointer, data, ts, xf, axis, shifts = aligned
    out = tmp_path / "relion"
    _export(store, pointer, "relion", out)
    glob = starfile.read(out / "tomograms.star")
    row = glob.iloc[0] if not isinstance(glob, dict) else glob["global"].iloc[0]
    assert row["rlnTomoName"] == "TS_01" and row["rlnTomoHand"] == -1
    assert (row["rlnVoltage"], row["rlnSphericalAberration"], row["rlnAmplitudeContrast"]) == (300, 2.7, 0.07)
    assert row["rlnTomoTiltSeriesPixelSize"] == PIXEL and row["rlnMicrographOriginalPixelSize"] == PIXEL
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"], row["rlnTomoSizeZ"]) == (48, 40, 800)  # 2000 Å / 2.5
    table = starfile.read(out / row["rlnTomoTiltSeriesStarFile"])
    keep = [0, 1, 2, 3, 4, 6]
    assert len(table) == 6  # the excluded view is not listed
    # name@file points at the right section of the exported stack (1-based, RELION's notation)
    with mrcfile.open(out / "TS_01/TS_01.mrcs") as mrc:
        for name, i in zip(table["rlnMicrographName"], keep, strict=False):
            section, stack = name.split("@")
            assert stack == "TS_01/TS_01.mrcs" and int(section) == i + 1
            np.testing.assert_array_equal(mrc.data[int(section) - 1], data[i])
    assert _valid(out / "TS_01/TS_01.mrcs")
    assert table["rlnMicrographPreExposure"].tolist() == [ts.images[i].dose_prior_e_a2 for i in keep]
    assert table["rlnDefocusU"].tolist() == [30000 + 10 * i for i in keep]
    assert table["rlnDefocusV"].tolist() == [29000 + 10 * i for i in keep]
    assert table["rlnDefocusAngle"].tolist() == [20.0 + i for i in keep]
    # our importer gives the set's transforms and refined angles back
    back = relion_to_xf(table, pixel_size_a=PIXEL, image_shape=SHAPE)
    assert xf_point_difference_px(back.xf, xf[keep], SHAPE).max() < 1e-5
    refined = torch.tensor([ts.images[i].refined_tilt_angle_deg for i in keep], dtype=torch.float64)
    assert (back.tilt_angles_deg - refined).abs().max() < 1e-6
    # RELION's projection (Rz Ry Rx p + shift / pixel + N // 2, tomogram.cpp) of specimen points, from
    # the written numbers, lands where our geometry puts them in the raw views
    pts = torch.randn(12, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10

    def col(name):
        return torch.tensor(table[name].to_numpy(), dtype=torch.float64)

    rot = relion_rotation_matrices(col("rlnTomoXTilt"), col("rlnTomoYTilt"), col("rlnTomoZRot"))
    shift = torch.stack([col("rlnTomoXShiftAngst"), col("rlnTomoYShiftAngst")], 1) / PIXEL
    relion = pts @ rot[:, :2].transpose(-1, -2) + shift[:, None] + torch.tensor([48 // 2, 40 // 2])
    for k, i in enumerate(keep):
        ours = project_points(
            pts,
            tilt_angles_deg=refined[k : k + 1],
            tilt_axis_deg=float(axis[i]),
            shifts_px=shifts[i : i + 1],
            image_shape=SHAPE,
        )[0]
        assert (relion[k] - ours).abs().max() < 1e-4


def test_warp_export(aligned, tmp_path):
    store, pointer, _data, ts, xf, _axis, shifts = aligned
    out = tmp_path / "warp"
    _export(store, pointer, "warp", out)
    xml = out / "warp_tiltseries" / "TS_01.xml"
    assert xml.read_bytes().startswith(b"\xef\xbb\xbf<?xml")  # UTF-8 with BOM, like Warp 2
    w = read_warp_xml(xml)
    assert w.per_tilt["UseTilt"] == [True] * 5 + [False, True]
    refined = [im.refined_tilt_angle_deg for im in ts.images]
    assert w.per_tilt["Angles"] == pytest.approx(refined, abs=1e-9)
    assert w.per_tilt["Dose"] == [im.dose_prior_e_a2 for im in ts.images]
    got = warp_to_xf(
        w.per_tilt["AxisAngle"],
        torch.tensor([w.per_tilt["AxisOffsetX"], w.per_tilt["AxisOffsetY"]], dtype=torch.float64).T,
        pixel_size_a=PIXEL,
    )
    keep = [0, 1, 2, 3, 4, 6]
    assert xf_point_difference_px(got[keep], xf[keep], SHAPE).max() < 1e-9
    assert w.per_tilt["AxisOffsetX"][2] == pytest.approx(float(shifts[2, 0]) * PIXEL)  # raw shift, Å
    assert float(w.param("CTF", "PixelSize")) == PIXEL and float(w.param("CTF", "Voltage")) == 300
    grids = {el.tag: grid_values(el) for el in w.other}
    assert grids["GridCTF"] == pytest.approx([(29500 + 10 * i) * 1e-4 for i in range(7)])  # µm
    assert grids["GridCTFDefocusDelta"] == pytest.approx([0.1] * 7)
    assert grids["GridCTFDefocusAngle"] == pytest.approx([20.0 + i for i in range(7)])
    star = starfile.read(out / "tomostar" / "TS_01.tomostar")
    assert star["wrpAngleTilt"].tolist() == ANGLES and len(star["wrpMovieName"]) == 7
    stack = out / "warp_tiltseries" / "tiltstack" / "TS_01"
    assert _valid(stack / "TS_01.st")
    assert read_tlt(stack / "TS_01.tlt").tolist() == pytest.approx(refined, abs=1e-4)
    assert (read_xf(stack / "TS_01.xf")[keep] - xf[keep]).abs().max() < 1e-3


def test_aretomo_export(aligned, tmp_path):
    store, pointer, data, ts, _xf, axis, shifts = aligned
    out = tmp_path / "aretomo"
    _export(store, pointer, "aretomo", out)
    d = out / "TS_01"
    assert _valid(d / "TS_01.mrc")
    with mrcfile.open(d / "TS_01.mrc") as mrc:
        np.testing.assert_array_equal(mrc.data, data)
    assert read_tlt(d / "TS_01.tlt").tolist() == ANGLES
    aln = read_aln(d / "TS_01.aln")  # strict: counts consistent
    assert aln.RawSize == (48, 40, 7) and aln.DarkFrame == [(5, 5, 6.0)]
    assert aln.raw_indices().tolist() == [0, 1, 2, 3, 4, 6]
    keep = aln.raw_indices()
    assert (aln.column("ROT") - axis[keep]).abs().max() < 1e-6
    assert (torch.stack([aln.column("TX"), aln.column("TY")], 1) - shifts[keep]).abs().max() < 1e-5
    refined = torch.tensor([ts.images[i].refined_tilt_angle_deg for i in keep.tolist()], dtype=torch.float64)
    assert (aln.column("TILT") - refined).abs().max() < 1e-5
    assert (aln.column("GMAG") - 1).abs().max() < 1e-7


def test_relion_without_ctf_notes_it(aligned, tmp_path):
    store, *_ = aligned
    again = run_step(
        store,
        "import-tilt-series",
        {"files": str(tmp_path / "stacks"), "pattern": "{TS}.st", "voltage_kv": 300, "tilt_axis_deg": 84.0},
    )
    output = _export(store, str(again.id), "relion", tmp_path / "r")  # no CTF in this run or upstream
    assert "no CTF found" in output
    table = starfile.read(tmp_path / "r" / "tilt_series" / "TS_01.star")
    assert "rlnDefocusU" not in table.columns and len(table) == 7
    assert table["rlnTomoZRot"].tolist() == pytest.approx([84.0] * 7)  # unaligned: the nominal axis
    assert math.isclose(table["rlnTomoYTilt"].iloc[0], -9.0)
