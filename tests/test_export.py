"""``tiltflow export --format imod|ctffind``: the IMOD layout reads back with our readers and mrcfile."""

import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.ctffind import read_ctffind
from tiltflow.io.imod import read_com, read_tlt, read_xf
from tiltflow.io.imod_defocus import read_defocus
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries
from tiltflow.workflow.store import ProjectStore


@pytest.fixture
def aligned(tmp_path):
    folder = tmp_path / "stacks"
    angles = [-6.0, -3.0, 0.0, 3.0, 6.0]
    data = np.random.default_rng(0).normal(size=(5, 40, 48)).astype(np.float32)
    write_mrc(folder / "TS_01.st", data, voxel_size_a=2.5)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in angles))
    store = ProjectStore(tmp_path / "p")
    run = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 80.0,
            "dose_per_tilt_e_a2": 3.0,
        },
    )
    value = store.load(store.resolve(str(run.id)))
    xf = []
    for i, im in enumerate(value.items[0].images):
        im.transform = [0.17, 0.98, -0.98, 0.17, float(i), -float(i)]
        im.refined_tilt_angle_deg = im.tilt_angle_deg + 0.5
        xf.append(im.transform)
    value.items[0].images[4].enabled = False
    store.add_output(run.id, "TiltSeries_2", value)
    ctf = CtfSeriesSet(
        [
            CtfTomoSeries(
                "TS_01", [CtfTomo(i + 1, a, 30000 + i, 29000 + i, 10.0, 0.0, 8.0, 0.2) for i, a in enumerate(angles)]
            )
        ]
    )
    store.add_output(run.id, "CTFTomoSeries", ctf)
    return store, run, data, torch.tensor(xf, dtype=torch.float64)


def test_imod_layout(aligned, tmp_path):
    store, run, data, xf = aligned
    out = tmp_path / "imod"
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), f"{run.id}.TiltSeries_2", "--format", "imod", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    d = out / "TS_01"
    np.testing.assert_array_equal(read_stack(d / "TS_01.st"), data)
    with open("/dev/null", "w") as sink:
        assert mrcfile.validate(str(d / "TS_01.st"), print_file=sink)
    assert torch.allclose(read_xf(d / "TS_01.xf"), xf, atol=1e-4)
    assert read_tlt(d / "TS_01.rawtlt").tolist() == [-6, -3, 0, 3, 6]
    assert read_tlt(d / "TS_01.tlt").tolist() == pytest.approx([-5.5, -2.5, 0.5, 3.5, 6.5])
    tilt = {p.program: p for p in read_com(d / "tilt.com")}["tilt"]
    assert tilt.options["EXCLUDELIST"] == "5" and tilt.options["TILTFILE"] == "TS_01.tlt"
    assert {p.program for p in read_com(d / "newst.com")} == {"newstack"}
    ctf = read_ctffind(d / "TS_01_ctffind.txt")
    assert [r.defocus_1_a for r in ctf.rows] == [30000, 30001, 30002, 30003, 30004]
    assert len(read_defocus(d / "TS_01.defocus").entries) == 5


def test_ctffind_export_needs_ctf(tmp_path):
    folder = tmp_path / "stacks"
    write_mrc(folder / "A.st", np.zeros((3, 16, 16), np.float32), voxel_size_a=2.0)
    (folder / "A.rawtlt").write_text("-3\n0\n3\n")
    store = ProjectStore(tmp_path / "p")
    run_step(store, "import-tilt-series", {"files": str(folder), "pattern": "{TS}.st", "voltage_kv": 300})
    result = CliRunner().invoke(
        build_cli(), ["export", "-p", str(store.root), "1", "--format", "ctffind", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "no CTF estimated" in result.output
