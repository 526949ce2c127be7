"""Parameters that cannot fit the images are refused before any movie is read: one line naming
the option the user typed and the image size (issue 11: the 384² tutorial)."""

from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.store import ProjectStore


def test_a_window_larger_than_the_images_is_one_line_before_any_work(tmp_path):
    data = tmp_path / "data"
    write_demo_dataset(data, DemoConfig(n_series=1, n_tilts=3, size=(128, 96), n_frames=2, seed=1))
    root = tmp_path / "p"
    cli = build_cli()
    imported = CliRunner().invoke(cli, ["import-movies", "-p", str(root), "--files", str(data), "--pattern", "*.mdoc"])
    assert imported.exit_code == 0, imported.output
    out = CliRunner().invoke(cli, ["motion-ctf", "-p", str(root), "--input", "1", "--window", "512"])
    assert out.exit_code == 2
    errors = [line for line in out.output.splitlines() if line.strip()]
    assert len(errors) == 1, out.output
    assert "--window 512" in errors[0] and "128 x 96 px" in errors[0] and "TS_01" in errors[0]
    assert "pass --window 96 or less" in errors[0]
    assert [r.step for r in ProjectStore(root).runs()] == ["import-movies"]  # nothing was started


def test_set_accepts_the_cli_spelling_of_a_parameter():
    from tiltflow.workflow.workflow_file import apply_overrides, load_workflow

    wf = load_workflow("tutorial")
    apply_overrides(wf, ["motion-ctf.window=256", "align.bead-diameter-nm=15", "reconstruct.binning=2"])
    by_step = {s.step: s.params for s in wf.steps}
    assert by_step["motion-ctf"]["window_px"] == 256 and "window" not in by_step["motion-ctf"]
    assert by_step["align"]["bead_diameter_nm"] == 15
    assert by_step["reconstruct"]["binning"] == 2


def test_tutorial_on_a_384_session_stops_in_one_line_or_completes_with_verdicts(tmp_path):
    """issue 11: the tutorial on ``demo-data --size 384 384`` either completes or stops with one
    line naming the series and the reason; never an angle of 90° or more."""
    data = tmp_path / "data"
    write_demo_dataset(data, DemoConfig(n_series=1, n_tilts=11, size=(384, 384), n_frames=4, seed=3))
    root = tmp_path / "p"
    base = [
        "workflow",
        "run",
        "tutorial",
        "-p",
        str(root),
        "--set",
        f"import-movies.files={data}",
        "--set",
        f"import-movies.gain={data / 'gain_ref.gain'}",
        "--set",
        "align.binning=2",
        "--set",
        "reconstruct.binning=2",
    ]
    stopped = CliRunner().invoke(build_cli(), base)
    assert stopped.exit_code == 2
    errors = [line for line in stopped.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "TS_01" in errors[0] and "--window 512" in errors[0], stopped.output
    done = CliRunner().invoke(build_cli(), [*base, "--set", "motion-ctf.window=256"])
    assert done.exit_code == 0, done.output
    assert "TS_01: verdict " in done.output
    store = ProjectStore(root)
    align = next(r for r in store.runs() if r.step == "align")
    ts = store.load(store.resolve(str(align.id))).items[0]
    angles = [im.refined_tilt_angle_deg for im in ts.images if im.enabled]
    assert max(abs(a) for a in angles) < 90.0
    assert ts.alignment["verdict"]["status"] in ("good", "check", "failed")
