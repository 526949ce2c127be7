"""Issue 15: every Scipion template's plan — each protocol becomes a step, is folded into one, or says
why not (out of scope with its hand-over, not a tiltflow step, input not mapped) — and `workflow run`
prints it (`--dry-run`, `--dry-run --json`)."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiltflow.cli.workflow_cmd import workflow_group
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.scipion import parse_scipion_template
from tiltflow.workflow.scipion_convert import motioncor_gain
from tiltflow.workflow.scipion_map import markdown_table
from tiltflow.workflow.steps.base import all_steps
from tiltflow.workflow.workflow_file import load_workflow, validate

REPO = Path(__file__).resolve().parents[1]

# The pre-processing protocols of each template: id -> step ("~step": folded into that step; None: not
# run). Every other protocol must be listed as out of scope.
EXPECTED = {
    "202601_Streaming_Chlamy.json.template": {
        "42935": "import-movies",
        "42867": "motion-ctf",
        "42827": "~import-movies",
        "42789": "xray-erase",
        "42725": "align",
        "43131": "~reconstruct",
        "43000": "normalize",
        "43042": "reconstruct",
        "43085": "reconstruct",
    },
    "202601_Streaming_HIV.json.template": {
        "41473": "import-movies",
        "41405": "motion-ctf",
        "41365": "~import-movies",
        "41575": "xray-erase",
        "41613": "dose-filter",
        "41650": "~align",
        "41695": "~align",
        "41749": "align",
        "41538": "erase-beads",
        "41917": "ctf",
        "41792": "~reconstruct",
        "41832": "normalize",
        "41874": "reconstruct",
    },
    "tutorial_STA_CellEnv_Chlamy.json.template": {
        "2": "import-movies",
        "52": "motion-ctf",
        "113": "xray-erase",
        "151": "align",
        "726": "~reconstruct",
        "766": "normalize",
        "808": "reconstruct",
    },
    "tutorial_STA_HIV.json.template": {
        "2": "import-movies",
        "52": "motion-ctf",
        "152": "xray-erase",
        "115": "erase-beads",
        "190": "dose-filter",
        "227": "~align",
        "272": "~align",
        "326": "align",
        "369": "assign-alignment",
        "1660": "ctf",
        "1787": "~reconstruct",
        "405": "normalize",
        "542": "reconstruct",
    },
    "tutorial_STA_apoferritin.json.template": {
        "2": "import-movies",
        "52": "motion-ctf",
        "113": "xray-erase",
        "2173": "align",
    },
    "tutorial_nonOrientedPicking_ribosome.json.template": {
        "1254": "import-tilt-series",
        "2506": "align",
        "2157": None,
        "2197": None,
        "2313": None,
    },
    "deprecated/tutorial_apoferritin_STA.json.template": {
        "2": "import-movies",
        "83": "motion-ctf",
        "186": "xray-erase",
        "253": "normalize",
        "478": "align",
        "575": "reconstruct",
        "714": "assign-alignment",
    },
}
EXPECTED["202601_F_Streaming_Chlamy.json.template"] = EXPECTED["202601_Streaming_Chlamy.json.template"]
EXPECTED["202601_F_Streaming_HIV.json.template"] = EXPECTED["202601_Streaming_HIV.json.template"]
for _old, _ids in (
    ("deprecated/tomo_202503_HIV_workflow.json.template", "2 83 243 206 310 376 481 542 687 794 863 752 933"),
    ("deprecated/tutorial_HIV_STA_202503.json.template", "2 51 151 114 189 226 273 327 372 450 505 408 546"),
):
    EXPECTED[_old] = dict(zip(_ids.split(), EXPECTED["tutorial_STA_HIV.json.template"].values(), strict=False))


def _templates() -> list[str]:
    from conftest import corpus_dir

    folder = corpus_dir() / "scipion"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json.template")) if folder.is_dir() else []


def _need_steps(*steps: str) -> None:
    missing = sorted({s.lstrip("~") for s in steps if s} - set(all_steps()))
    if missing:
        pytest.skip(f"tiltflow has no {', '.join(missing)} step yet")


@pytest.mark.parametrize("name", _templates() or ["(no corpus)"])
def test_every_template_has_a_plan_for_every_protocol(corpus, name):
    path = corpus / "scipion" / name
    if not path.is_file():
        pytest.skip("no Scipion templates in the corpus")
    assert name in EXPECTED, f"new template {name}: add its expected plan"
    expected = EXPECTED[name]
    _need_steps(*expected.values())
    protocols = parse_scipion_template(path.read_text())
    wf = load_workflow(path)
    plan = {e.id: e for e in wf.plan}
    assert sorted(plan) == sorted(str(p["object.id"]) for p in protocols)  # each protocol once
    got = {pid: ("~" + e.step if e.kind == "folded" else e.step) for pid, e in plan.items() if e.kind != "out of scope"}
    assert got == expected
    for e in wf.plan:
        assert e.reason, e
        if e.kind == "out of scope":
            assert re.search(r"hand over with .*`tiltflow export RUN --format (imod|relion)", e.reason), e.reason
    # the workflow steps are the mapped protocols (+ their extra steps), and they validate
    assert {s.id.split("-")[0] for s in wf.steps} == {pid for pid, st in expected.items() if st and st[0] != "~"}
    validate(wf)


def test_hiv_template_translations(corpus):
    _need_steps("dose-filter", "normalize", "erase-beads", "assign-alignment")
    wf = load_workflow(corpus / "scipion" / "tutorial_STA_HIV.json.template")
    steps = {s.id: s for s in wf.steps}
    assert steps["52"].params["binning"] == 2 and steps["52"].params["estimate_ctf"] is False
    assert steps["52"].inputs == {"input": "2.TiltSeriesM"}
    assert steps["115"].params == {"detect": True, "bead_diameter_nm": 10.0}  # fidder: gold from the IMOD model
    assert steps["190"].params["dose_per_tilt_e_a2"] is None and steps["190"].params["mode"] == "exposure"
    assert steps["326"].inputs == {"input": "190.TiltSeries"}
    assert steps["326"].params == {
        "bead_diameter_nm": 10.0,
        "method": "fiducial",
        "solve_magnification": False,
        "solve_tilt_angles": True,
        "refine_tilt_axis": True,
    }
    assert steps["369"].inputs == {"input": "115.TiltSeries", "alignment": "326.TiltSeries"}
    assert steps["1660"].params == {
        "window_px": 512,
        "fit_phase": False,
        "ctf_range_a": [50.0, 5.0],
        "defocus_range_um": [1.0, 5.0],
    }
    assert steps["405"].params == {"binning": 4, "scale": "mean_sd", "mean": 0.0, "sd": 1.0, "mode": "float"}
    # IMOD's CTF correction travels past the normalization into tomo3d's reconstruction (binning 1: the
    # stack is already binned 4), SIRT 30 iterations, 300 px thick
    assert steps["542"].inputs == {"input": "405.TiltSeries", "ctf": "1660.goodSetOfCTFTomoSeries2"}
    assert steps["542"].params == {
        "ctf_defocus_tol_nm": 200,
        "ctf_correct": "phaseflip",
        "even_odd": False,
        "binning": 1,
        "method": "sirt",
        "sirt_iterations": 30,
        "thickness_px": 300,
    }
    plan = {e.id: e for e in wf.plan}
    assert plan["1787"].step == "reconstruct" and "folded into step 542 (reconstruct)" in plan["1787"].reason
    assert "ctf=1660.goodSetOfCTFTomoSeries2" in plan["1787"].reason
    # hand-overs name the run that feeds them: the aligned set for RELION, the tomograms for the picker
    assert "--format relion" in plan["700"].reason and "workflow step 369 (assign-alignment)" in plan["700"].reason
    assert "workflow step 542 (reconstruct)" in plan["626"].reason
    assert plan["585"].reason.startswith("out of scope (denoising)")


def test_streaming_templates_compose_movies_into_tilt_series(corpus):
    _need_steps("normalize", "dose-filter", "erase-beads")
    wf = load_workflow(corpus / "scipion" / "202601_Streaming_HIV.json.template")
    steps = {s.id: s for s in wf.steps}
    imp = steps["41473"].params
    assert imp["files"].endswith("empiar_10164_HIV_frames/") and imp["pattern"] == "*.mdoc"  # ComposeTS's mdocs
    assert imp["pixel_size_a"] == 0.675 and imp["dose_per_tilt_e_a2"] == 3.0 and imp["amplitude_contrast"] == 0.07
    assert steps["41405"].inputs == {"input": "41473.TiltSeriesM"} and steps["41405"].params["binning"] == 2
    assert steps["41575"].inputs == {"input": "41405.TiltSeries"}  # ComposeTS folded
    # AreTomo used only for its CTF: a ctf step, no alignment
    assert steps["41917"].step == "ctf" and steps["41917"].inputs == {"input": "41405.TiltSeries"}
    assert steps["41874"].inputs == {"input": "41832.TiltSeries", "ctf": "41917.CTFTomoSeries"}
    plan = {e.id: e for e in wf.plan}
    assert "which reads its mdocs" in plan["41365"].reason and plan["41365"].step == "import-movies"
    chlamy = {s.id: s for s in load_workflow(corpus / "scipion" / "202601_Streaming_Chlamy.json.template").steps}
    assert chlamy["42935"].params["tomo5"] is True and chlamy["42935"].params["pattern"] == "*/frames/*.mdoc"
    assert chlamy["42725-ctf"].inputs == {"input": "42789.TiltSeries"}  # its CTF is used: made
    assert chlamy["42725-reconstruct"].params == {
        "even_odd": False,
        "binning": 4,
        "method": "wbp",
        "thickness_px": 512,
        "dose_weight": True,
    }
    assert chlamy["43042"].params["method"] == "sirt" and "hamming_start" not in chlamy["43042"].params


def test_ribosome_template_imports_stacks(corpus):
    wf = load_workflow(corpus / "scipion" / "tutorial_nonOrientedPicking_ribosome.json.template")
    imp = wf.steps[0]
    assert imp.step == "import-tilt-series" and imp.params["angles"] == "mdoc" and imp.params["pattern"] == "*.*"
    plan = {e.id: e for e in wf.plan}
    assert "pixel size unknown here" in plan["2506"].reason  # said, not dropped
    assert plan["2157"].step is None and "tiltflow subset" in plan["2157"].reason


def _cli(*args: str):
    return CliRunner().invoke(workflow_group, list(args), catch_exceptions=False)


def test_dry_run_json_is_the_plan_and_touches_nothing(corpus, tmp_path):
    _need_steps("normalize", "dose-filter", "erase-beads", "assign-alignment")
    path = corpus / "scipion" / "tutorial_STA_HIV.json.template"
    result = _cli("run", str(path), "-p", str(tmp_path / "p"), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert len(plan) == len(parse_scipion_template(path.read_text()))
    assert all(set(e) == {"protocol", "id", "label", "step", "reason"} for e in plan)
    assert {
        "protocol": "ProtTomo3dReconstrucTomo",
        "id": "542",
        "label": "tomo3d - reconstruct tomogram",
        "step": "reconstruct",
    }.items() <= next(e for e in plan if e["id"] == "542").items()
    assert not (tmp_path / "p").exists()
    text = _cli("run", str(path), "-p", str(tmp_path / "p"), "--dry-run")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].startswith("Scipion workflow tutorial_STA_HIV.json.template: 26 protocols -> 10 tiltflow steps")
    assert any("ProtRelion5ExtractSubtomos" in line for line in lines)
    assert any(line.strip().startswith('542 reconstruct inputs {"input": "405.TiltSeries"') for line in lines)
    assert not (tmp_path / "p").exists()


def _write(path: Path, protocols: list[dict]) -> Path:
    path.write_text(json.dumps(protocols, indent=4))
    return path


def test_run_prints_the_plan_before_running(tmp_path):
    path = _write(
        tmp_path / "wf.json",
        [
            {
                "object.className": "ProtImportTsMovies",
                "object.id": "2",
                "filesPath": str(tmp_path / "nowhere"),
                "filesPattern": "*.mdoc",
            },
            {"object.className": "ProtRelion5ExtractSubtomos", "object.id": "9", "inputTS": "2.outputTiltSeriesM"},
        ],
    )
    result = CliRunner().invoke(workflow_group, ["run", str(path), "-p", str(tmp_path / "p")])
    assert result.exit_code != 0
    out = result.stdout
    assert out.startswith("Scipion workflow wf.json: 2 protocols -> 1 tiltflow steps")
    assert "-> import-movies: workflow step 2" in out and "-- not run: out of scope" in out
    assert "folder not found" in result.stderr


def test_nothing_mappable_still_prints_the_plan(tmp_path):
    path = _write(
        tmp_path / "wf.json",
        [
            {"object.className": "DynamoBoxing", "object.id": "1"},
            {"object.className": "SomeUnknownProtocol", "object.id": "2", "inputTomograms": "1.tomograms"},
        ],
    )
    with pytest.raises(InputError) as info:
        load_workflow(path)
    assert [e.protocol for e in info.value.plan] == ["DynamoBoxing", "SomeUnknownProtocol"]
    result = _cli("run", str(path), "--dry-run", "--json")
    assert result.exit_code == 2
    plan = json.loads(result.stdout)
    assert plan[0]["step"] is None and plan[0]["reason"].startswith("out of scope (picking and segmentation)")
    assert plan[1]["reason"] == "unknown protocol: not a tiltflow step"
    assert "no protocol of this Scipion workflow can be run" in result.stderr


@pytest.mark.parametrize("rot", range(4))
@pytest.mark.parametrize("flip", range(3))
def test_motioncor_gain_orientation_is_tiltflows_flip_then_transpose(rot, flip):
    """MotionCor rotates the gain counter-clockwise as 3dmod shows it (row 0 at the bottom), then flips
    (1 upside down, 2 left-right); tiltflow flips then transposes. Both on one gain must agree."""
    import numpy as np
    import torch

    from tiltflow.core.frames import orient_gain

    gain = np.arange(12.0).reshape(3, 4)
    want = np.rot90(gain, k=-rot)  # counter-clockwise with y up = clockwise in array order
    want = want[::-1] if flip == 1 else want[:, ::-1] if flip == 2 else want
    out: dict = {}
    motioncor_gain({"gainRot": rot, "gainFlip": flip}, out)
    if "gain_flip" not in out:  # no flip+transpose equivalent: reported, not guessed
        assert "_notes" in out and rot in (1, 2, 3)
        return
    got = orient_gain(
        torch.tensor(gain),
        transpose=out["gain_transpose"] == "transpose",
        flip_x=out["gain_flip"] == "x",
        flip_y=out["gain_flip"] == "y",
    ).numpy()
    np.testing.assert_array_equal(got, want)


def test_readme_lists_the_mapped_protocols():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- scipion-table -->\n", "<!-- /scipion-table -->"
    assert start in readme and end in readme, "README: the Scipion table markers are missing"
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == markdown_table(), (
        "README's Scipion table is out of date: paste the output of "
        "python -c 'from tiltflow.workflow.scipion_map import markdown_table as t; "
        'print(t(), end="")\''
    )
