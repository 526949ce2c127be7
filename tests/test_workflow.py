"""Workflow files: the tutorial template, overrides, export, and Scipion's workflow JSON."""

import json
from pathlib import Path

import pytest

from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import (
    apply_overrides, export_workflow, load_workflow, run_workflow, template_names, validate,
)

FAST = ["motion-ctf.window_px=128", "motion-ctf.ctf_range_a=[30, 8]", "motion-ctf.motion_grid=[1, 1, 1]",
        "motion-ctf.defocus_grid=null", "reconstruct.binning=2", "reconstruct.thickness_nm=120"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DemoConfig(n_series=2, n_tilts=5, size=(160, 128), n_frames=4, seed=8), force=True)
    return out


def test_tutorial_template_runs_end_to_end(demo, tmp_path):
    assert "tutorial" in template_names()
    wf = load_workflow("tutorial")
    apply_overrides(wf, [f"import-movies.files={demo}", f"import-movies.gain={demo / 'gain_ref.gain'}", *FAST])
    store = ProjectStore(tmp_path / "p")
    runs = run_workflow(store, wf, options={})
    assert [r.step for r in runs.values()] == ["import-movies", "motion-ctf", "xray-erase", "reconstruct"]
    assert all(r.status == "finished" for r in runs.values())
    tomos = store.load(store.resolve(str(runs["reconstruct"].id)))
    assert len(tomos.items) == 2 and tomos.items[0].shape == (round(1200 / (2.76 * 2)), 64, 80)
    # export gives the same chain back, and it validates
    exported = export_workflow(store)
    assert [s.step for s in exported.steps] == ["import-movies", "motion-ctf", "xray-erase", "reconstruct"]
    assert exported.steps[1].inputs == {"input": "import-movies.TiltSeriesM"}
    validate(exported)
    assert json.loads(json.dumps(exported.to_json()))["steps"][3]["params"]["binning"] == 2


def test_bad_workflow_lists_every_problem(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"tiltflow_workflow": 1, "steps": [
        {"id": "a", "step": "import-movies", "params": {"voltage_kv": -3}},
        {"id": "b", "step": "no-such-step"},
        {"id": "c", "step": "xray-erase", "inputs": {"input": "zzz"}}]}))
    wf = load_workflow(path)
    with pytest.raises(InputError) as info:
        validate(wf)
    text = "\n".join(info.value.problems)
    assert "'files': Field required" in text and "'voltage_kv'" in text
    assert "unknown step 'no-such-step'" in text and "names no earlier step" in text
    with pytest.raises(InputError, match="expected STEP.PARAM=VALUE"):
        apply_overrides(wf, ["nonsense"])
    with pytest.raises(InputError, match="no step 'zz'"):
        apply_overrides(wf, ["zz.x=1"])


def test_scipion_tutorial_workflow_imports_and_runs(corpus, demo, tmp_path):
    wf = load_workflow(corpus / "scipion" / "tutorial_STA_CellEnv_Chlamy.json.template")
    assert [s.step for s in wf.steps] == ["import-movies", "motion-ctf", "xray-erase"]
    assert any("ProtAreTomoAlignRecon" in u for u in wf.unmapped)
    imp, motion, xray = wf.steps
    assert imp.params["tomo5"] is True and imp.params["pixel_size_a"] == 1.91 and imp.params["tilt_axis_deg"] == -95.0
    assert motion.params["ctf_range_a"] == [30.0, 8.0] and motion.params["defocus_grid"] == [1, 1, 8]
    assert motion.inputs == {"input": "2.outputTiltSeriesM"} and xray.inputs == {"input": "52.TiltSeries_3"}
    apply_overrides(wf, [f"2.files={demo}", "2.pattern=*.mdoc", "2.tomo5=false", "2.pixel_size_a=2.76",
                         "2.magnification=null", "2.tilt_axis_deg=85", "52.window_px=128", "52.motion_grid=[1,1,1]",
                         "52.defocus_grid=null"])
    store = ProjectStore(tmp_path / "p")
    options: dict = {}
    runs = run_workflow(store, wf, options=options)
    assert [r.status for r in runs.values()] == ["finished"] * 3
    assert runs["113"].inputs == {"input": f"{runs['52'].id}.TiltSeries"}
    assert any("TiltSeries_3 does not exist yet" in w for w in options["warnings"])


def test_json_schema_validates_the_tutorial_template():
    import jsonschema

    from tiltflow.workflow.workflow_file import json_schema

    schema = json_schema()
    template = load_workflow("tutorial").to_json()
    jsonschema.validate(template, schema)
    template["steps"][1]["params"]["no_such_param"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(template, schema)
