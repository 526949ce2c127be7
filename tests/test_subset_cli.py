"""``tiltflow subset`` (the viewer's Save, scriptable): disabled views, re-stacking, CTF subsets."""

import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "stacks"
    angles = [-9, -6, -3, 0, 3, 6, 9]
    for ts in ("TS_01", "TS_02"):
        data = np.stack([np.full((32, 40), i, np.float32) for i in range(len(angles))])
        write_mrc(folder / f"{ts}.st", data, voxel_size_a=2.0)
        (folder / f"{ts}.rawtlt").write_text("".join(f"{a}\n" for a in angles))
    store = ProjectStore(tmp_path / "p")
    run_step(
        store,
        "import-tilt-series",
        {
            "files": str(folder),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": 0.0,
            "dose_per_tilt_e_a2": 2.0,
        },
    )
    return store


def invoke(*args):
    result = CliRunner().invoke(build_cli(), list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_subset_disables_views_and_series(project):
    out = invoke(
        "subset",
        "-p",
        str(project.root),
        "--input",
        "1",
        "--exclude",
        "TS_02",
        "--exclude-views",
        "TS_01:1,6",
        "--exclude-beyond",
        "7.5",
    )
    assert "1.TiltSeries_2" in out and "views excluded" in out
    subset = project.load(project.output(1, "TiltSeries_2"))
    ts1, ts2 = subset.items
    assert [im.enabled for im in ts1.images] == [False, True, True, True, True, False, False]
    assert not ts2.enabled and ts1.enabled
    assert project.load(project.output(1, "TiltSeries")).items[0].images[0].enabled  # source untouched


def test_subset_restack_keeps_order_and_dose(project):
    invoke("subset", "-p", str(project.root), "--input", "1.TiltSeries", "--exclude-views", "TS_01:2", "--restack")
    subset = project.load(project.output(1, "TiltSeries_2"))
    ts = subset.items[0]
    assert [im.tilt_angle_deg for im in ts.images] == [-9, -3, 0, 3, 6, 9]
    assert [im.index for im in ts.images] == list(range(6))
    stack = read_stack(ts.images[0].file)
    assert stack.shape == (6, 32, 40) and stack[:, 0, 0].tolist() == [0, 2, 3, 4, 5, 6]
    assert [im.dose_accumulated_e_a2 for im in ts.images] == [
        im.dose_accumulated_e_a2
        for im in project.load(project.output(1, "TiltSeries")).items[0].images
        if im.tilt_angle_deg != -6
    ]
    run = project.run(1)
    assert ts.images[0].file.startswith(str(project.root / run.run_dir))


def test_subset_bad_view_number(project):
    result = CliRunner().invoke(
        build_cli(), ["subset", "-p", str(project.root), "--input", "1", "--exclude-views", "TS_01:0,8"]
    )
    assert result.exit_code == 2 and "out of range 1..7" in result.output
