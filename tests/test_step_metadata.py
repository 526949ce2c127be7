"""Parameter metadata as data on the declaration (issue 16, items 2 and 6): the mode a parameter
belongs to (``condition``), its ``group`` and ``expert`` flag drive ``--help``, the workflow schema
and the notes on options a mode does not use; ``Step.validate`` runs every check of a step before
any work; each step declares the published methods it implements and ``show RUN`` prints them."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.steps.base import Condition, all_steps, condition_of, get_step, param_meta
from tiltflow.workflow.steps.checks import validate_cli

MODE_PREFIXES = (
    "Fiducial:",
    "Patch:",
    "CTF:",
    "Motion:",
    "SIRT:",
    "WBP:",
    "mean_sd:",
    "min_max:",
    "Phase flipping:",
    "With --resolve",
)


def tiltflow(*args):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def _stack_project(tmp_path: Path, size: int = 128) -> Path:
    """A project with one imported 5-view stack (run 1)."""
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    with mrcfile.new(stacks / "TS_A.st") as mrc:
        mrc.set_data(np.random.default_rng(0).normal(size=(5, size, size)).astype(np.float32))
        mrc.voxel_size = 2.0
    (stacks / "TS_A.rawtlt").write_text("-30\n-15\n0\n15\n30\n")
    root = tmp_path / "P"
    done = tiltflow("import-tilt-series", "-p", root, "--files", stacks, "--pattern", "*.st", "--voltage", "300")
    assert done.exit_code == 0, done.output
    return root


# -- the declarations ---------------------------------------------------------------------------------


def test_modes_live_in_conditions_not_in_help_text():
    for step in all_steps().values():
        for name in step.params.model_fields:
            meta = param_meta(step.params, name)
            assert not meta.help.startswith(MODE_PREFIXES), (step.id, name, meta.help)
            if meta.condition is not None:  # the mode is a field of the same model, with that value
                field = step.params.model_fields[meta.condition.field]
                assert field.annotation is not None
                assert meta.condition.field != name


@pytest.mark.parametrize(
    "step_id, name, condition",
    [
        ("align", "align_z_nm", ("method", ("patch",))),
        ("align", "bead_diameter_nm", ("method", ("fiducial",))),
        ("align", "drop_beads", ("resolve", (True,))),
        ("reconstruct", "sirt_iterations", ("method", ("sirt",))),
        ("reconstruct", "radial_cutoff", ("method", ("wbp",))),
        ("reconstruct", "ctf_defocus_tol_nm", ("ctf_correct", ("phaseflip",))),
        ("motion-ctf", "window_px", ("estimate_ctf", (True,))),
        ("normalize", "sd", ("scale", ("mean_sd",))),
        ("ctf", "window_px", None),  # the shared CTF options: ctf always estimates
        ("align", "binning", None),
    ],
)
def test_conditions_as_declared(step_id, name, condition):
    cond = condition_of(get_step(step_id).params, name)
    assert (None if cond is None else (cond.field, cond.values)) == condition


def test_condition_forms_and_option_text():
    from tiltflow.workflow.steps.align import AlignParams

    assert Condition.of(("method", "patch")) == Condition.of({"field": "method", "values": ["patch"]})
    assert Condition.of(("method", "patch")).option_text(AlignParams) == "--method patch"
    assert Condition.of(("resolve", True)).option_text(AlignParams) == "--resolve"
    assert Condition.of(("resolve", False)).option_text(AlignParams) == "--no-resolve"
    assert Condition.of(("method", ("fiducial", "patch"))).option_text(AlignParams) == "--method fiducial|patch"
    assert Condition.of(("method", "patch")).holds({"method": "patch"})
    assert not Condition.of(("method", "patch")).holds(AlignParams())


def test_workflow_schema_carries_group_expert_condition():
    from tiltflow.workflow.workflow_file import json_schema

    variants = {
        v["properties"]["step"]["const"]: v["properties"]["params"]["properties"]
        for v in json_schema()["properties"]["steps"]["items"]["oneOf"]
    }
    z = variants["align"]["align_z_nm"]
    assert (z["group"], z["condition"], z["cli"]) == ("patch", {"field": "method", "values": ["patch"]}, "--align-z-nm")
    assert variants["align"]["solve_magnification"]["expert"] is True
    assert "expert" not in variants["align"]["bead_diameter_nm"]
    assert variants["motion-ctf"]["window_px"]["condition"] == {"field": "estimate_ctf", "values": [True]}
    assert "condition" not in variants["ctf"]["window_px"]  # no --estimate-ctf in ctf
    assert variants["ctf"]["window_px"]["group"] == "ctf"


# -- Step.validate -------------------------------------------------------------------------------------


def test_validate_words_problems_as_validate_cli():
    from tiltflow.workflow.steps.reconstruct import ReconstructParams

    bad = {"method": "sirt", "hamming_start": 0.2, "binning": 0}
    with pytest.raises(InputError) as direct:
        validate_cli(ReconstructParams, bad)
    with pytest.raises(InputError) as via_step:
        get_step("reconstruct").validate(bad)
    assert via_step.value.problems == direct.value.problems
    assert any("--binning 0" in line for line in via_step.value.problems)


@pytest.mark.parametrize(
    "step_id, params, notes",
    [
        (
            "align",
            {"method": "fiducial", "align_z_nm": 100.0},
            ["--align-z-nm applies only with --method patch — ignored with --method fiducial"],
        ),
        ("align", {"method": "patch", "align_z_nm": 100.0}, []),
        ("align", {"method": "fiducial", "iterations": 5}, []),  # the default, as workflow files repeat it
        (
            "align",
            {"method": "patch", "bead_diameter_nm": 5.0},
            ["--bead-diameter-nm applies only with --method fiducial — ignored with --method patch"],
        ),
        (
            "reconstruct",
            {"method": "wbp", "sirt_iterations": 5, "positivity": True},
            [
                "--sirt-iterations applies only with --method sirt — ignored with --method wbp",
                "--positivity applies only with --method sirt — ignored with --method wbp",
            ],
        ),
        (
            "motion-ctf",
            {"estimate_ctf": False, "window_px": 256},
            ["--window applies only with --estimate-ctf — ignored with --no-estimate-ctf"],
        ),
        ("ctf", {"window_px": 256}, []),
        (
            "normalize",
            {"scale": "min_max", "mean": 3.0},
            ["--mean applies only with --scale mean_sd — ignored with --scale min_max"],
        ),
    ],
)
def test_validate_notes_options_of_an_inactive_mode(step_id, params, notes):
    assert get_step(step_id).validate(params) == notes


def test_validate_given_names_what_the_user_typed():
    step = get_step("align")
    assert step.validate({"method": "fiducial", "iterations": 5}, given={"iterations"}) == [
        "--iterations applies only with --method patch — ignored with --method fiducial"
    ]
    assert step.validate({"method": "fiducial", "align_z_nm": 99.0}, given=set()) == []


def test_validate_runs_the_checks_against_the_input(tmp_path):
    from tiltflow.workflow.steps.checks_data import check_align, check_inputs
    from tiltflow.workflow.store import ProjectStore

    root = _stack_project(tmp_path)
    store = ProjectStore(root, create=False)
    source = store.load(store.outputs(1)[0])
    step = get_step("align")
    p = step.params.model_validate({"binning": 8})  # 128 px / 8 = 16 px < 32 px
    with pytest.raises(InputError) as direct:
        check_align(p, source)
    with pytest.raises(InputError) as via_step:
        step.validate(p, {"input": source})
    with pytest.raises(InputError) as via_runner:  # the runner's and watch's entry
        check_inputs("align", p, {"input": source})
    assert via_step.value.problems == via_runner.value.problems == direct.value.problems
    assert step.validate(step.params.model_validate({"binning": 2}), {"input": source}) == []
    seen = []
    spy = replace(step, checks=lambda params, s: seen.append((params, s)))
    assert spy.validate(p) == [] and seen == []  # no input: only the parameter checks
    spy.validate(p, {"input": source})
    assert seen == [(p, source)]


def test_steps_with_input_checks_declare_them():
    declared = {s.id for s in all_steps().values() if s.checks is not None}
    assert declared == {"motion-ctf", "ctf", "align", "reconstruct", "xray-erase", "normalize"}


# -- the command line ----------------------------------------------------------------------------------


def _sections(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]


def test_help_groups_options_expert_last():
    text = tiltflow("align", "--help").output
    assert _sections(text) == [
        "Inputs",
        "Options",
        "Fiducial options (with --method fiducial)",
        "Patch options (with --method patch)",
        "Geometry options",
        "Expert options",
        "Run options",
    ]
    patch = text.split("Patch options (with --method patch):", 1)[1].split("\n\n", 1)[0]
    assert "--align-z-nm" in patch and "--bead-diameter-nm" not in patch
    expert = text.split("Expert options:", 1)[1].split("Run options:", 1)[0]
    assert "--solve-magnification" in expert and "With --method fiducial:" in " ".join(expert.split())
    assert "With --resolve: beads to leave out" in " ".join(text.split())
    assert "-h, --help" in text.split("Run options:", 1)[1]


def test_help_lists_every_option_of_every_step():
    for step in all_steps().values():
        text = tiltflow(step.id, "--help").output
        for name in step.params.model_fields:
            assert param_meta(step.params, name).flag in text, (step.id, name)
        assert _sections(text)[-1] == "Run options", step.id


def test_cli_notes_an_option_of_an_inactive_mode(tmp_path, monkeypatch):
    from tiltflow.workflow import runner

    seen = {}

    def fake_run_step(store, step_id, values, inputs, *, options, report, **kw):
        seen["notes"] = list(report.notes)
        raise InputError("stop here")

    monkeypatch.setattr(runner, "run_step", fake_run_step)
    tiltflow("align", "-p", tmp_path / "P", "--input", "1", "--method", "fiducial", "--align-z-nm", "100")
    assert seen["notes"] == ["--align-z-nm applies only with --method patch — ignored with --method fiducial"]
    tiltflow("align", "-p", tmp_path / "P", "--input", "1", "--method", "fiducial", "--iterations", "5")
    assert seen["notes"] == ["--iterations applies only with --method patch — ignored with --method fiducial"]
    tiltflow("align", "-p", tmp_path / "P", "--input", "1", "--method", "patch", "--align-z-nm", "100")
    assert seen["notes"] == []


def test_cli_bad_option_still_one_line(tmp_path):
    done = tiltflow("align", "-p", tmp_path / "P", "--input", "1", "--binning", "0")
    assert done.exit_code == 2
    assert "--binning 0: must be at least 1" in done.output


# -- methods ---------------------------------------------------------------------------------------------


def test_every_step_declares_its_methods():
    for step in all_steps().values():
        assert step.methods, step.id
        for line in step.methods:
            for doi in re.findall(r"doi:(\S+)", line):
                assert re.fullmatch(r"10\.\d{4,9}/\S+[^.,;]", doi), (step.id, doi)
    assert any("doi:10.1038/s41592-019-0580-y" in m for m in get_step("motion-ctf").methods)  # Warp
    assert any("doi:10.1016/j.jsb.2015.08.008" in m for m in get_step("ctf").methods)  # CTFFIND4
    assert any("doi:10.1016/j.yjsbx.2022.100068" in m for m in get_step("align").methods)  # AreTomo


def test_show_run_prints_methods(tmp_path):
    root = _stack_project(tmp_path)
    text = tiltflow("show", "-p", root, "1").output
    block = text.split("  methods:\n", 1)[1].splitlines()
    assert block == [f"    {m}" for m in get_step("import-tilt-series").methods]
    shown = json.loads(tiltflow("show", "-p", root, "1", "--json").output)
    assert shown["methods"] == list(get_step("import-tilt-series").methods)
