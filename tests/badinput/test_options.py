"""Bad options (issue 13 rows 5 and 8, issue 12 item 5): refused before a run exists or any work,
with exit code 2 and one line naming the option as typed and the fix; the project unchanged.

Run 1 of the project is a movie set (128 x 96 px, 3 frames, 2.76 Å/px), run 2 a stack set
(128 x 128 px, 5 views, 2.0 Å/px)."""

from __future__ import annotations

import pytest

from tiltflow.workflow.steps.base import get_step
from tiltflow.workflow.steps.checks import validate_cli
from tiltflow.workflow.store import ProjectStore

from ._cli import assert_refused, invoke, project_state

MOVIES, STACKS = "1", "2"

# (step, input run, options, words the one line must hold)
CASES = [
    # non-finite numbers, for every kind of float option (row 5)
    ("motion-ctf", MOVIES, ["--bfactor", "nan"], ["--bfactor nan", "finite"]),
    ("motion-ctf", MOVIES, ["--bfactor", "inf"], ["--bfactor inf"]),
    ("motion-ctf", MOVIES, ["--frame-xray-sd", "nan"], ["--frame-xray-sd nan"]),
    ("motion-ctf", MOVIES, ["--fit-range", "500", "nan"], ["--fit-range 500 nan"]),
    ("ctf", STACKS, ["--defocus-range", "0.5", "inf"], ["--defocus-range 0.5 inf"]),
    ("reconstruct", STACKS, ["--thickness-nm", "inf"], ["--thickness-nm inf"]),
    ("reconstruct", STACKS, ["--z-offset-nm", "nan"], ["--z-offset-nm nan"]),
    ("align", STACKS, ["--bead-diameter-nm", "inf"], ["--bead-diameter-nm inf"]),
    ("xray-erase", STACKS, ["--max-radius", "nan"], ["--max-radius nan"]),
    # reversed, negative and zero ranges and grids (row 8)
    ("motion-ctf", MOVIES, ["--fit-range", "10", "500"], ["--fit-range 10 500", "--fit-range 500 10"]),
    ("motion-ctf", MOVIES, ["--fit-range", "-500", "-10"], ["--fit-range -500 -10"]),
    ("motion-ctf", MOVIES, ["--ctf-range", "8", "30"], ["--ctf-range 8 30", "--ctf-range 30 8"]),
    ("motion-ctf", MOVIES, ["--defocus-range", "8", "-1"], ["--defocus-range 8 -1"]),
    ("motion-ctf", MOVIES, ["--motion-grid", "0", "0", "0"], ["--motion-grid 0 0 0", "1 or more"]),
    ("motion-ctf", MOVIES, ["--defocus-grid", "-1", "2", "3"], ["--defocus-grid -1 2 3"]),
    ("ctf", STACKS, ["--defocus-grid", "2", "0", "1"], ["--defocus-grid 2 0 1"]),
    ("motion-ctf", MOVIES, ["--binning", "0"], ["--binning 0", "at least 1"]),
    ("motion-ctf", MOVIES, ["--window", "32"], ["--window 32", "--window 64 or more"]),
    ("motion-ctf", MOVIES, ["--window", "65"], ["--window 65", "even"]),
    ("reconstruct", STACKS, ["--thickness-nm", "-100"], ["--thickness-nm -100"]),
    ("reconstruct", STACKS, ["--thickness-nm", "1e9"], ["--thickness-nm 1e+09", "at most 2000"]),
    ("reconstruct", STACKS, ["--radial-cutoff", "2"], ["--radial-cutoff 2"]),
    ("align", STACKS, ["--align-z-nm", "-5"], ["--align-z-nm -5"]),
    ("align", STACKS, ["--iterations", "0"], ["--iterations 0"]),
    ("xray-erase", STACKS, ["--border", "9"], ["--border 9", "at most 5"]),
    ("xray-erase", STACKS, ["--max-radius", "9"], ["--extra-large-radius", "--max-radius 9"]),
    # options against the images (issue 12 item 5): the option, the size and the series
    ("motion-ctf", MOVIES, ["--window", "4096"], ["--window 4096", "128 x 96 px", "TS_01", "--window 96 or less"]),
    ("ctf", STACKS, ["--window", "4096"], ["--window 4096", "128 x 128 px", "TS_A", "--window 128 or less"]),
    ("ctf", STACKS, ["--window", "64", "--ctf-range", "3", "2"], ["--ctf-range 3 2", "Nyquist", "TS_A"]),
    ("align", STACKS, ["--binning", "1000"], ["--binning 1000", "128 x 128 px", "TS_A", "--binning 4 or less"]),
    ("align", STACKS, ["--bead-diameter-nm", "5000", "--binning", "1"], ["--bead-diameter-nm 5000", "TS_A"]),
    (
        "align",
        STACKS,
        ["--method", "fiducial", "--binning", "4", "--bead-diameter-nm", "0.5"],
        ["--bead-diameter-nm 0.5", "--binning"],
    ),
    ("reconstruct", STACKS, ["--binning", "1000"], ["--binning 1000", "128 x 128 px", "--binning 8 or less"]),
    ("reconstruct", STACKS, ["--thickness-px", "100000", "--binning", "1"], ["--thickness-px 100000", "TS_A"]),
    ("reconstruct", STACKS, ["--x-offset-nm", "1000", "--binning", "1"], ["--x-offset-nm 1000", "TS_A"]),
]

# checked against the movies by ``checks_data.check_inputs`` in ``runner.run_step``, before a run is created
MOTION_DATA_CASES = [
    ("motion-ctf", MOVIES, ["--binning", "1000"], ["--binning 1000", "128 x 96 px", "TS_01"]),
    ("motion-ctf", MOVIES, ["--window", "64", "--binning", "2"], ["--binning 2", "TS_01"]),
    ("motion-ctf", MOVIES, ["--window", "64", "--motion-grid", "2", "2", "9"], ["--motion-grid 2 2 9", "3 frames"]),
    ("motion-ctf", MOVIES, ["--window", "64", "--ctf-range", "5", "3"], ["--ctf-range 5 3", "Nyquist"]),
]

IMPORT_CASES = [
    (["--voltage", "3000"], ["--voltage 3000", "at most 400"]),
    (["--voltage", "-300"], ["--voltage -300"]),
    (["--voltage", "nan"], ["--voltage nan"]),
    (["--pixel-size", "-1"], ["--pixel-size -1"]),
    (["--pixel-size", "inf"], ["--pixel-size inf"]),
    (["--pixel-size", "1e300"], ["--pixel-size 1e+300"]),
    (["--dose", "nan"], ["--dose nan"]),
    (["--initial-dose", "-1"], ["--initial-dose -1"]),
    (["--amp-contrast", "1.5"], ["--amp-contrast 1.5"]),
    (["--cs", "inf"], ["--cs inf"]),
    (["--tilt-axis", "nan"], ["--tilt-axis nan"]),
]


def _case_id(case) -> str:
    return f"{case[0]} {' '.join(case[2])}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_bad_option_is_one_line_before_any_run(project, case):
    step, source, options, needles = case
    before = project_state(project)
    result = invoke([step, "-p", project, "--input", source, *options])
    assert_refused(result, needles, project, before)


@pytest.mark.parametrize("case", MOTION_DATA_CASES, ids=_case_id)
def test_motion_ctf_options_against_the_movies_before_the_first_movie(project, case):
    test_a_bad_option_is_one_line_before_any_run(project, case)


@pytest.mark.parametrize("options,needles", IMPORT_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_import_option_is_one_line(project, movie_data, options, needles):
    before = project_state(project)
    result = invoke(["import-movies", "-p", project, "--files", movie_data, *options])
    assert_refused(result, needles, project, before)


@pytest.mark.parametrize(
    "options,needles", [(["--pixel-size", "0"], ["--pixel-size 0"]), (["--binning", "nan"], ["--binning nan"])]
)
def test_bad_options_of_the_other_imports(project, tmp_path, options, needles):
    step = "import-tilt-series" if options[0] == "--pixel-size" else "import-alignment"
    before = project_state(project)
    result = invoke(
        [step, "-p", project, "--files", tmp_path, *options]
        + (["--input", STACKS] if step == "import-alignment" else [])
    )
    assert_refused(result, needles, project, before)


# -- accepted values: the same checks let good values through -----------------------------------------
GOOD = [
    (
        "motion-ctf",
        {
            "window_px": 64,
            "fit_range_a": (500, 10),
            "ctf_range_a": (30, 8),
            "motion_grid": (1, 1, 1),
            "defocus_grid": (2, 2, 3),
            "defocus_range_um": (0.5, 8),
            "bfactor_a2": -500.0,
        },
    ),
    ("ctf", {"window_px": 128, "ctf_range_a": (30, 5)}),
    ("reconstruct", {"thickness_nm": 2000.0, "z_offset_nm": -50.0, "binning": 8, "x_offset_nm": 10.0}),
    ("align", {"binning": 4, "bead_diameter_nm": 10.0, "align_z_nm": 100.0}),
    ("xray-erase", {"max_radius_px": 8.0, "extra_large_radius_px": 8.0, "border_px": 5}),
    ("import-movies", {"files": "/x", "voltage_kv": 60.0, "pixel_size_a": 0.1, "dose_per_tilt_e_a2": 3.0}),
    ("import-movies", {"files": "/x", "voltage_kv": 400.0, "pixel_size_a": 100.0, "tilt_axis_deg": -95.0}),
]


@pytest.mark.parametrize("step,values", GOOD, ids=[g[0] for g in GOOD])
def test_good_values_pass_the_checks(pristine_project, step, values):
    from tiltflow.workflow.steps import checks_data

    validate_cli(get_step(step).params, values)
    p = get_step(step).params.model_validate(values)
    store = ProjectStore(pristine_project)
    check = getattr(checks_data, f"check_{step.replace('-', '_')}", None)
    if check is not None:
        check(p, store.load(store.resolve(MOVIES if step == "motion-ctf" else STACKS)))


@pytest.mark.parametrize("case", MOTION_DATA_CASES, ids=_case_id)
def test_motion_ctf_checks_against_the_movies(pristine_project, case):
    """The checks of the hook above, called directly (they hold without the hook)."""
    from tiltflow.workflow.errors import InputError
    from tiltflow.workflow.steps.checks_data import check_motion_ctf

    step, source, options, needles = case
    values = _values(get_step(step).params, options)
    store = ProjectStore(pristine_project)
    with pytest.raises(InputError) as info:
        check_motion_ctf(get_step(step).params.model_validate(values), store.load(store.resolve(source)))
    (line,) = info.value.problems
    assert all(n in line for n in needles), line


def _values(model, options: list[str]) -> dict:
    """``--window 64 --motion-grid 2 2 9`` as field values."""
    from tiltflow.workflow.steps.checks import cli_flag

    by_flag = {cli_flag(model, name): name for name in model.model_fields}
    values, key = {}, None
    for token in options:
        if token in by_flag:
            key = by_flag[token]
            values[key] = []
        else:
            values[key].append(float(token) if "." in token else int(token))
    return {k: v[0] if len(v) == 1 else tuple(v) for k, v in values.items()}


def test_the_tutorial_window_on_small_images_names_the_option_once(project):
    """issue 12 item 5: one line, once, naming --window and the image size (not window_px)."""
    result = invoke(["motion-ctf", "-p", project, "--input", MOVIES])
    line = assert_refused(result, ["--window 512", "128 x 96 px"], None)
    assert "window_px" not in line and line.count("--window 512") == 1
