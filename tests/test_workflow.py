"""Workflow files: the tutorial template, overrides, export, and Scipion's workflow JSON."""

import json
from pathlib import Path

import pytest

from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.sets import alignment_verdict
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import (
    apply_overrides,
    export_workflow,
    load_workflow,
    run_workflow,
    template_names,
    validate,
)

FAST = [
    "motion-ctf.window_px=128",
    "motion-ctf.ctf_range_a=[30, 8]",
    "motion-ctf.motion_grid=[1, 1, 1]",
    "motion-ctf.defocus_grid=null",
    "align.binning=2",
    "align.bead_diameter_nm=5",
    "reconstruct.binning=2",
    "reconstruct.thickness_nm=120",
]
# small fields need small gold for a fiducial alignment: 5 nm beads (18 px) instead of the course's 10 nm
DEMO = DemoConfig(n_series=2, n_tilts=7, size=(256, 224), n_frames=4, seed=8, bead_diameter_nm=5.0, n_beads=12)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DEMO, force=True)
    return out


def test_tutorial_template_runs_end_to_end(demo, tmp_path):
    assert "tutorial" in template_names()
    wf = load_workflow("tutorial")
    apply_overrides(wf, [f"import-movies.files={demo}", f"import-movies.gain={demo / 'gain_ref.gain'}", *FAST])
    store = ProjectStore(tmp_path / "p")
    runs = run_workflow(store, wf, options={})
    chain = ["import-movies", "motion-ctf", "xray-erase", "align", "reconstruct"]
    assert [r.step for r in runs.values()] == chain
    assert all(r.status == "finished" for r in runs.values())
    aligned = store.load(store.resolve(str(runs["align"].id)))
    # 7 tilts of 256 x 224 px: every series is judged; one that failed has no transforms and the
    # workflow goes on without it (issue 11); the others are aligned and reconstructed
    verdicts = {ts.ts_id: alignment_verdict(ts)["status"] for ts in aligned.items}
    assert set(verdicts.values()) <= {"good", "check", "failed"} and len(verdicts) == 2
    for ts in aligned.items:
        assert all((im.transform is None) == (verdicts[ts.ts_id] == "failed") for im in ts.images)
    assert runs["reconstruct"].inputs == {"input": f"{runs['align'].id}.TiltSeries"}
    tomos = store.load(store.resolve(str(runs["reconstruct"].id)))
    assert sorted(t.ts_id for t in tomos.items) == sorted(k for k, v in verdicts.items() if v != "failed")
    assert tomos.items[0].shape == (round(1200 / (2.76 * 2)), 128, 112)  # axis ~85°: y along it
    # export gives the same chain back, and it validates
    exported = export_workflow(store)
    assert [s.step for s in exported.steps] == chain
    assert exported.steps[1].inputs == {"input": "import-movies.TiltSeriesM"}
    validate(exported)
    assert json.loads(json.dumps(exported.to_json()))["steps"][4]["params"]["binning"] == 2


def test_bad_workflow_lists_every_problem(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(
        json.dumps(
            {
                "tiltflow_workflow": 1,
                "steps": [
                    {"id": "a", "step": "import-movies", "params": {"voltage_kv": -3}},
                    {"id": "b", "step": "no-such-step"},
                    {"id": "c", "step": "xray-erase", "inputs": {"input": "zzz"}},
                ],
            }
        )
    )
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
    assert [(s.id, s.step) for s in wf.steps] == [
        ("2", "import-movies"),
        ("52", "motion-ctf"),
        ("113", "xray-erase"),
        ("151", "align"),
        ("151-reconstruct", "reconstruct"),
        ("151-ctf", "ctf"),
        ("766", "normalize"),
        ("808", "reconstruct"),
    ]
    assert any("ProtRelion5ExtractSubtomos" in u for u in wf.unmapped)
    imp, motion, xray, align, rec, ctf, norm, flipped = wf.steps
    assert imp.params["tomo5"] is True and imp.params["pixel_size_a"] == 1.91 and imp.params["tilt_axis_deg"] == -95.0
    assert motion.params["ctf_range_a"] == [30.0, 8.0] and motion.params["defocus_grid"] == [1, 1, 8]
    assert motion.inputs == {"input": "2.TiltSeriesM"} and xray.inputs == {"input": "52.TiltSeries_3"}
    # AreTomo's align + reconstruct: alignZ 1000 unbinned px at the import's 1.91 Å/px, thickness 2048 / bin 4;
    # its CTF (used by RELION's extraction) as a ctf step on AreTomo's input
    assert align.params == {
        "method": "patch",
        "binning": 4,
        "refine_tilt_axis": True,
        "refine_tilt_offset": True,
        "align_z_nm": pytest.approx(191.0),
    }
    assert rec.inputs == {"input": "151.TiltSeries"}
    assert rec.params == {"even_odd": True, "binning": 4, "method": "wbp", "thickness_px": 512, "dose_weight": True}
    assert ctf.inputs == {"input": "113.TiltSeries"}
    # IMOD's preprocess is a normalize step (bin 4); IMOD's CTF correction (ctfphaseflip) travels past it into
    # the IMOD reconstruction, which reconstructs the binned stack as is
    assert norm.inputs == {"input": "151.TiltSeries"} and norm.params["binning"] == 4
    assert flipped.inputs == {"input": "766.TiltSeries", "ctf": "52.CTFTomoSeries"}
    assert flipped.params["ctf_correct"] == "phaseflip" and flipped.params["ctf_defocus_tol_nm"] == 200
    assert flipped.params["binning"] == 1 and flipped.params["thickness_px"] == 350
    assert flipped.params["fake_sirt_iterations"] == 10
    apply_overrides(
        wf,
        [
            f"2.files={demo}",
            "2.pattern=*.mdoc",
            "2.tomo5=false",
            "2.pixel_size_a=2.76",
            "2.magnification=null",
            "2.tilt_axis_deg=85",
            "52.window_px=128",
            "52.motion_grid=[1,1,1]",
            "52.defocus_grid=null",
            "151.binning=2",
            "151.iterations=1",
            "151-reconstruct.binning=2",
            "151-reconstruct.thickness_px=50",
            "151-ctf.window_px=128",
            "766.binning=2",
            "808.thickness_px=50",
        ],
    )
    store = ProjectStore(tmp_path / "p")
    report = RunReport()
    runs = run_workflow(store, wf, report=report)
    assert [r.status for r in runs.values()] == ["finished"] * 8
    assert runs["808"].inputs == {"input": f"{runs['766'].id}.TiltSeries", "ctf": f"{runs['52'].id}.CTFTomoSeries"}
    assert runs["766"].inputs == {"input": f"{runs['151'].id}.TiltSeries"}
    assert runs["113"].inputs == {"input": f"{runs['52'].id}.TiltSeries"}
    assert runs["151-reconstruct"].inputs == {"input": f"{runs['151'].id}.TiltSeries"}
    assert any("TiltSeries_3 does not exist yet" in w for w in report.warnings)
    tomos = store.load(store.resolve(f"{runs['151-reconstruct'].id}.Tomograms"))
    assert [t.shape for t in tomos.items] == [(50, 128, 112)] * 2  # axis ~85°: y along it
    flipped_tomos = store.load(store.resolve(f"{runs['808'].id}.Tomograms"))
    assert [t.shape for t in flipped_tomos.items] == [(50, 128, 112)] * 2  # normalize binned 2, rec 1


def _protocol(cls: str, pid: str, **fields) -> dict:
    """One protocol as Scipion's workflow export writes it."""
    return {
        "object.className": cls,
        "object.id": pid,
        "object.label": cls,
        "object.comment": "",
        "_useQueue": False,
        "_prerequisites": "",
        "_queueParams": None,
        "runName": None,
        "runMode": 0,
        **fields,
        "hostName": "localhost",
        "numberOfThreads": 2,
    }


def test_scipion_imod_fiducial_chain_folds_into_align(tmp_path):
    """IMOD's route in Scipion (preprocess -> xcorr -> fiducial model -> fiducial alignment -> tomogram),
    listed out of dependency order: the preprocess is a normalize step (bin 4); the coarse prealignment and
    the fiducial model fold into one align step (bead size carried; the binned stack is aligned as is)."""
    protocols = [
        _protocol(
            "ProtImodTomoReconstruction",
            "808",
            inputSetOfTiltSeries="766.TiltSeries",
            tomoThickness=300,
            radialFirstParameter=0.35,
            radialSecondParameter=0.035,
            fakeInteractionsSIRT=0,
            processOddEven=False,
        ),
        _protocol("ProtImportTsMovies", "2", filesPath="/data", filesPattern="*.mdoc", samplingRate=1.38),
        _protocol("ProtWarpTSMotionCorr", "52", inputTSMovies="2.outputTiltSeriesM"),
        _protocol("ProtImodXraysEraser", "113", inputSetOfTiltSeries="52.TiltSeries", peakCriterion=8.0),
        _protocol("ProtImodTsNormalization", "500", inputSetOfTiltSeries="113.TiltSeries", binning=4, floatDensities=2),
        _protocol("ProtImodXcorrPrealignment", "600", inputSetOfTiltSeries="500.TiltSeries", cumulativeCorr=False),
        _protocol(
            "ProtImodFiducialModel",
            "700",
            inputSetOfTiltSeries="600.TiltSeries",
            typeOfModel=0,
            fiducialDiameter=6.0,
            numberFiducial=10,
            twoSurfaces=False,
        ),
        _protocol(
            "ProtImodFiducialAlignment",
            "766",
            inputSetOfLandmarkModels="700.FiducialModelGaps",
            rotationSolutionType=2,
            magnificationSolutionType=0,
            tiltAngleSolutionType=1,
        ),
        _protocol("ProtTomo3dReconstrucTomo", "900", inputSetOfTiltSeries="766.TiltSeries"),
    ]
    path = tmp_path / "imod.json"
    path.write_text(json.dumps(protocols, indent=4))
    wf = load_workflow(path)
    assert [(s.id, s.step) for s in wf.steps] == [
        ("2", "import-movies"),
        ("52", "motion-ctf"),
        ("113", "xray-erase"),
        ("500", "normalize"),
        ("766", "align"),
        ("808", "reconstruct"),
        ("900", "reconstruct"),
    ]
    norm, align, rec, tomo3d = wf.steps[3:]
    assert norm.params == {"binning": 4, "scale": "mean_sd", "mean": 0.0, "sd": 1.0, "mode": "float"}
    assert align.inputs == {"input": "500.TiltSeries"}
    assert align.params == {
        "bead_diameter_nm": 6.0,
        "method": "fiducial",
        "solve_magnification": False,
        "solve_tilt_angles": True,
        "refine_tilt_axis": True,
        "binning": 1,
    }
    assert rec.inputs == {"input": "766.TiltSeries"}
    assert rec.params["binning"] == 1 and rec.params["thickness_px"] == 300 and rec.params["method"] == "wbp"
    # tomo3d with Scipion's defaults: WBP with a Hamming window over the whole range, 300 px thick
    assert tomo3d.params == {"binning": 1, "method": "wbp", "hamming_start": 0.0, "thickness_px": 300}
    assert wf.unmapped == []
    validate(wf)


def test_json_schema_validates_the_tutorial_template():
    import jsonschema

    from tiltflow.workflow.workflow_file import json_schema

    schema = json_schema()
    template = load_workflow("tutorial").to_json()
    jsonschema.validate(template, schema)
    template["steps"][1]["params"]["no_such_param"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(template, schema)
