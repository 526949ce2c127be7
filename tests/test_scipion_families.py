"""Issue 15: a Scipion workflow written here for each family of pre-processing protocols — its plan
(what each protocol became, with the parameters translated) and, where tiltflow has the steps, the
mapped chain run on a small demo session (a stacks-only session for ProtImportTs)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tiltflow.io.mrc import write_mrc
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import write_demo_dataset
from tiltflow.workflow.run_options import RunReport
from tiltflow.workflow.steps.base import all_steps
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import apply_overrides, load_workflow, run_workflow, validate

# 5 nm beads for the small fields (as tests/test_workflow.py)
DEMO = DemoConfig(n_series=2, n_tilts=7, size=(256, 224), n_frames=4, seed=8, bead_diameter_nm=5.0, n_beads=12)
PIXEL = DEMO.pixel_size_a


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, DEMO, force=True)
    return out


def P(cls: str, pid: str, **fields) -> dict:
    """One protocol as Scipion's workflow export writes it."""
    return {
        "object.className": cls,
        "object.id": pid,
        "object.label": cls.lower(),
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


def _need(*steps: str) -> None:
    missing = sorted(set(steps) - set(all_steps()))
    if missing:
        pytest.skip(f"tiltflow has no {', '.join(missing)} step yet")


def _load(tmp_path: Path, protocols: list[dict], name: str = "scipion.json"):
    path = tmp_path / name
    path.write_text(json.dumps(protocols, indent=4))
    wf = load_workflow(path)
    validate(wf)
    return wf, {e.id: e for e in wf.plan}, {s.id: s for s in wf.steps}


def _run(tmp_path: Path, wf, overrides: list[str]):
    apply_overrides(wf, overrides)
    store = ProjectStore(tmp_path / "p")
    report = RunReport()
    runs = run_workflow(store, wf, report=report)
    assert {sid: r.status for sid, r in runs.items()} == {s.id: "finished" for s in wf.steps}
    return store, runs, report


def _import_ts_movies(demo: Path, pid: str = "2") -> dict:
    return P(
        "ProtImportTsMovies",
        pid,
        filesPath=str(demo),
        filesPattern="*.mdoc",
        isTomo5=False,
        exclusionWords=None,
        anglesFrom=0,
        voltage=300.0,
        sphericalAberration=2.7,
        amplitudeContrast=0.07,
        magnification=None,
        samplingRate=PIXEL,
        tiltAxisAngle=None,
        doseInitial=0.0,
        dosePerFrame=3.0,
        gainFile=str(demo / "gain_ref.gain"),
        darkFile=None,
    )


# --- motioncorr + cisTEM + IMOD fiducial route + fidder + tomo3d (the HIV tutorial) ----------------
def _hiv(demo: Path) -> list[dict]:
    return [
        _import_ts_movies(demo),
        P(
            "ProtTsMotionCorr",
            "52",
            inputTiltSeriesM="2.outputTiltSeriesM",
            alignFrame0=1,
            alignFrameN=0,
            useAlignToSum=True,
            binFactor=1.0,
            splitEvenOdd=False,
            patchX=0,
            patchY=0,
            gainRot=0,
            gainFlip=0,
            eerGroup=8,
        ),
        P("ProtFidderDetectAndEraseFiducials", "115", inTsSet="152.TiltSeries", probThreshold=0.5, doEvenOdd=False),
        P(
            "ProtImodXraysEraser",
            "152",
            inputSetOfTiltSeries="52.TiltSeries",
            peakCriterion=8.0,
            diffCriterion=6.0,
            maximumRadius=4.2,
            bigDiffCriterion=19,
            processOddEven=False,
        ),
        P(
            "ProtImodDoseFilter",
            "190",
            inputSetOfTiltSeries="152.TiltSeries",
            initialDose=0.0,
            inputDoseType=0,
            fixedImageDose=1.0,
            processOddEven=False,
        ),
        P(
            "ProtImodXcorrPrealignment",
            "227",
            inputSetOfTiltSeries="190.TiltSeries",
            cumulativeCorr=False,
            tiltAxisAngle=None,
        ),
        P(
            "ProtImodFiducialModel",
            "272",
            inputSetOfTiltSeries="227.TiltSeries",
            typeOfModel=0,
            fiducialDiameter=5.0,
            twoSurfaces=False,
            numberFiducial=10,
        ),
        P(
            "ProtImodFiducialAlignment",
            "326",
            inputSetOfLandmarkModels="272.FiducialModelGaps",
            rotationSolutionType=2,
            magnificationSolutionType=0,
            tiltAngleSolutionType=1,
        ),
        P(
            "ProtAssignTransformationMatrixTiltSeries",
            "369",
            getTMSetOfTiltSeries="326.TiltSeries",
            setTMSetOfTiltSeries="115.tiltSeries",
        ),
        P(
            "ProtImodTsNormalization",
            "405",
            inputSetOfTiltSeries="1787.TiltSeries",
            binning=2,
            floatDensities=2,
            scaleMean=0.0,
            scaleSd=1.0,
            scaleMax=255.0,
            scaleMin=0.0,
            modeToOutput=0,
            antialias=5,
        ),
        P(
            "ProtTomo3dReconstrucTomo",
            "542",
            inputSetOfTiltSeries="405.TiltSeries",
            doEvenOdd=False,
            method=1,
            nIterations=3,
            setShape=True,
            height=40,
            width=0,
            iniSlice=0,
            finSlice=0,
            Hamming=0.0,
        ),
        P("ProtTomo3dProtDenoiseTomogram", "585", inputSetTomograms="542.tomograms", method=0),
        P(
            "CistemProtTsCtffind",
            "1660",
            inputTiltSeries="52.TiltSeries",
            windowSize=128,
            lowRes=30.0,
            highRes=8.0,
            minDefocus=10000.0,
            maxDefocus=60000.0,
            findPhaseShift=False,
        ),
        P(
            "ProtImodCtfCorrection",
            "1787",
            inputSetOfTiltSeries="369.tiltSeries",
            inputSetOfCtfTomoSeries="1660.goodSetOfCTFTomoSeries2",
            defocusTol=200,
            interpolationWidth=15,
        ),
    ]


def test_hiv_family_plan_and_run(demo, tmp_path):
    _need("dose-filter", "erase-beads", "assign-alignment", "normalize")
    wf, plan, steps = _load(tmp_path, _hiv(demo))
    assert [s.id for s in wf.steps] == ["2", "52", "152", "115", "190", "326", "369", "1660", "405", "542"]
    assert steps["52"].params == {
        "binning": 1,
        "estimate_ctf": False,
        "even_odd": False,
        "gain_flip": "none",
        "gain_transpose": "none",
    }
    assert steps["115"].params == {"detect": True, "bead_diameter_nm": 5.0}  # the IMOD model's gold
    assert steps["326"].params["bead_diameter_nm"] == 5.0 and steps["326"].inputs == {"input": "190.TiltSeries"}
    assert steps["369"].inputs == {"input": "115.TiltSeries", "alignment": "326.TiltSeries"}
    assert steps["1660"].params["defocus_range_um"] == [1.0, 6.0]  # Å -> µm
    assert steps["542"].params == {
        "ctf_defocus_tol_nm": 200,
        "ctf_correct": "phaseflip",
        "even_odd": False,
        "binning": 1,
        "method": "sirt",
        "sirt_iterations": 3,
        "thickness_px": 40,
    }
    assert plan["227"].kind == plan["272"].kind == "folded" and plan["272"].step == "align"
    assert plan["585"].kind == "out of scope" and "workflow step 542" in plan["585"].reason
    # (motion-ctf checks its CTF window against the images even with estimate_ctf off)
    store, runs, report = _run(tmp_path, wf, ["326.binning=2", "52.window_px=128"])
    # the CTF subset a Scipion viewer would make: the ctf run's set stands in, with a warning
    assert runs["542"].inputs["ctf"] == f"{runs['1660'].id}.CTFTomoSeries"
    assert any("goodSetOfCTFTomoSeries2" in w for w in report.warnings)
    tomos = store.load(store.resolve(f"{runs['542'].id}.Tomograms"))
    assert tomos.items and all(t.shape[0] == 40 for t in tomos.items)
    assert all(t.voxel_size_a == pytest.approx(2 * PIXEL) for t in tomos.items)  # normalize binned by 2
    assigned = store.load(store.resolve(f"{runs['369'].id}.TiltSeries"))
    aligned = {ts.ts_id: ts for ts in store.load(store.resolve(f"{runs['326'].id}.TiltSeries")).items}
    for ts in assigned.items:  # the fidder-erased views carry the alignment
        ref = aligned[ts.ts_id]
        assert [im.transform is None for im in ts.images] == [im.transform is None for im in ref.images]


# --- streaming: pwem movies + MotionCor + ComposeTS + AreTomo + IMOD (the 2026 templates) ----------
def _streaming(demo: Path) -> list[dict]:
    return [
        P(
            "ProtAreTomoAlignRecon",
            "42725",
            inputSetOfTiltSeries="42789.TiltSeries",
            skipAlign=False,
            makeTomo=True,
            doEvenOdd=False,
            binFactor=2,
            alignZ=150,
            tomoThickness=80,
            refineTiltAngles=2,
            refineTiltAxis=1,
            doEstimateCtf=True,
            doPhaseShiftSearch=False,
            doDW=False,
            reconMethod=1,
            SARTiter=15,
            flipInt=False,
            sampleType=0,
        ),
        P("ProtImodXraysEraser", "42789", inputSetOfTiltSeries="42827.TiltSeries", processOddEven=False),
        P(
            "ProtComposeTS",
            "42827",
            inputMicrographs="42867.outputMicrographs",
            filesPath=str(demo),
            mdocPattern="*.mdoc",
            excludedWords="",
            isTomo5=False,
            percentTiltsRequired=3,
            time4NextTilt="180",
        ),
        P(
            "ProtMotionCorr",
            "42867",
            inputMovies="42935.outputMovies",
            doSaveAveMic=True,
            alignFrame0=1,
            alignFrameN=0,
            binFactor=1.0,
            splitEvenOdd=False,
            doApplyDoseFilter=False,
            patchX=0,
            patchY=0,
            gainRot=0,
            gainFlip=0,
        ),
        P(
            "ProtImportMovies",
            "42935",
            importFrom=0,
            filesPath=str(demo / "frames"),
            filesPattern="*.tif",
            voltage=300.0,
            sphericalAberration=2.7,
            amplitudeContrast=0.07,
            magnification=50000,
            samplingRate=PIXEL,
            doseInitial=0.0,
            dosePerFrame=3.0,
            gainFile=str(demo / "gain_ref.gain"),
            darkFile=None,
            dataStreaming=True,
        ),
        P(
            "ProtImodTsNormalization",
            "43000",
            inputSetOfTiltSeries="43131.TiltSeries",
            binning=2,
            floatDensities=0,
            modeToOutput=0,
        ),
        P(
            "ProtImodTomoReconstruction",
            "43085",
            inputSetOfTiltSeries="43000.TiltSeries",
            tomoThickness=40,
            tomoWidth=0,
            tomoShiftX=0.0,
            tomoShiftZ=0.0,
            fakeInteractionsSIRT=0,
            radialFirstParameter=0.35,
            radialSecondParameter=0.035,
            processOddEven=False,
        ),
        P(
            "ProtImodCtfCorrection",
            "43131",
            inputSetOfTiltSeries="42725.TiltSeries",
            inputSetOfCtfTomoSeries="42725.CTFTomoSeries",
            defocusTol=200,
        ),
    ]


def test_streaming_family_plan_and_run(demo, tmp_path):
    _need("normalize")
    wf, plan, steps = _load(tmp_path, _streaming(demo))
    assert [(s.id, s.step) for s in wf.steps] == [
        ("42935", "import-movies"),
        ("42867", "motion-ctf"),
        ("42789", "xray-erase"),
        ("42725", "align"),
        ("42725-reconstruct", "reconstruct"),
        ("42725-ctf", "ctf"),
        ("43000", "normalize"),
        ("43085", "reconstruct"),
    ]
    imp = steps["42935"].params
    assert (imp["files"], imp["pattern"], imp["dose_per_tilt_e_a2"]) == (str(demo), "*.mdoc", 3.0)
    assert "movies in" in plan["42935"].reason  # the movies' folder is not the mdocs'
    assert steps["42789"].inputs == {"input": "42867.TiltSeries"}
    assert plan["42827"].kind == "folded" and plan["42827"].step == "import-movies"
    assert steps["42725"].params == {
        "method": "patch",
        "binning": 2,
        "refine_tilt_axis": True,
        "refine_tilt_offset": True,
        "align_z_nm": pytest.approx(150 * PIXEL / 10),
    }
    assert steps["42725-reconstruct"].params == {"even_odd": False, "binning": 2, "method": "wbp", "thickness_px": 40}
    assert steps["43085"].inputs == {"input": "43000.TiltSeries", "ctf": "42725-ctf.CTFTomoSeries"}
    assert steps["43085"].params["binning"] == 1 and steps["43085"].params["ctf_correct"] == "phaseflip"
    assert steps["43000"].params == {"binning": 2, "scale": "none", "mode": "float"}
    store, runs, _ = _run(tmp_path, wf, ["42725.iterations=1", "42725-ctf.window_px=128", "42867.window_px=128"])
    tomos = store.load(store.resolve(f"{runs['43085'].id}.Tomograms"))
    assert tomos.items and all(t.shape[0] == 40 and t.voxel_size_a == pytest.approx(2 * PIXEL) for t in tomos.items)
    stack = store.load(store.resolve(f"{runs['43000'].id}.TiltSeries")).items[0]
    assert stack.size == (128, 112)  # ComposeTS's 256 x 224, binned 2


# --- Warp motion/CTF + teamtomo batchruntomo + IMOD and Warp reconstructions ---------------------------
def _warp(demo: Path) -> list[dict]:
    return [
        _import_ts_movies(demo),
        P(
            "ProtWarpTSMotionCorr",
            "52",
            inputTSMovies="2.outputTiltSeriesM",
            binFactor=1.0,
            m_range_min=500.0,
            m_range_max=10.0,
            bfactor=-500.0,
            x=1,
            y=1,
            z=2,
            average_halves=True,
            gainSwap=0,
            gainFlip=0,
            eer_ngroups=16,
            estimateCTF=True,
            window=128,
            range_min=30.0,
            range_max=8.0,
            defocus_min=0.5,
            defocus_max=8.0,
            c_x=None,
            c_y=None,
            c_z=None,
            fit_phase=False,
            use_sum=False,
        ),
        P(
            "ProtImodBRT",
            "478",
            inputSetOfTiltSeries="52.TiltSeries",
            alignMode=0,
            fidSize=5,
            patchSize=500,
            patchOverlapPercent=80,
        ),
        P(
            "ProtImodTomoReconstruction",
            "575",
            inputSetOfTiltSeries="478.TiltSeries",
            tomoThickness=60,
            tomoShiftZ=-5.0,
            processOddEven=True,
        ),
        P(
            "ProtWarpTomoReconstruct",
            "600",
            inputSet="478.TiltSeries",
            inputSetOfCtfTomoSeries="52.CTFTomoSeries",
            angpix=11,
            halfmap_tilts=False,
            deconv=False,
            invert=False,
            normalize=True,
            tomo_thickness=160,
        ),
    ]


def test_warp_brt_family_plan_and_run(demo, tmp_path):
    wf, plan, steps = _load(tmp_path, _warp(demo))
    assert [s.id for s in wf.steps] == ["2", "52", "478", "575", "600"]
    assert steps["52"].params["ctf_range_a"] == [30.0, 8.0] and steps["52"].params["motion_grid"] == [1, 1, 2]
    assert steps["478"].params == {"bead_diameter_nm": 5, "method": "fiducial", "binning": 4}  # ~10 Å/px
    assert steps["575"].params["binning"] == 1 and steps["575"].params["even_odd"] is True
    assert steps["575"].params["z_offset_nm"] == pytest.approx(5 * PIXEL / 10)  # IMOD SHIFT z = -offset
    assert steps["600"].params == {
        "even_odd": False,
        "invert": False,
        "method": "wbp",
        "binning": 4,
        "thickness_px": 40,
    }  # 11 Å/px, 160 unbinned px
    store, runs, _ = _run(tmp_path, wf, ["478.binning=2"])
    imod = store.load(store.resolve(f"{runs['575'].id}.Tomograms"))
    warp = store.load(store.resolve(f"{runs['600'].id}.Tomograms"))
    assert all(t.shape[0] == 60 and t.voxel_size_a == pytest.approx(PIXEL) for t in imod.items)
    assert all(t.shape[0] == 40 and t.voxel_size_a == pytest.approx(4 * PIXEL) for t in warp.items)
    assert all(t.even_file and t.odd_file for t in imod.items)


# --- ProtImportTs (stacks from elsewhere) + AreTomo ------------------------------------------------
@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> tuple[Path, dict]:
    from tiltflow.testing.tilt_series import noisy_tilt_series

    folder = tmp_path_factory.mktemp("stacks")
    s = noisy_tilt_series(DemoConfig(n_series=1, n_tilts=13, size=(192, 192), pixel_size_a=5.5, n_beads=10, seed=3))
    write_mrc(folder / "TS_01.st", s.views.numpy().astype(np.float32), voxel_size_a=5.5)
    (folder / "TS_01.rawtlt").write_text("".join(f"{a:.3f}\n" for a in s.mdoc.tolist()))
    return folder, s.truth


def test_import_ts_family_plan_and_run(stacks, tmp_path):
    folder, truth = stacks
    protocols = [
        P(
            "ProtImportTs",
            "1254",
            filesPath=str(folder),
            filesPattern="{TS}.st",
            isTomo5=False,
            exclusionWords=None,
            anglesFrom=2,
            minAngle=-60.0,
            maxAngle=60.0,
            stepAngle=3.0,
            ctfCorrected=False,
            interpolated=False,
            voltage=300.0,
            sphericalAberration=2.7,
            amplitudeContrast=0.1,
            magnification=50000,
            samplingRate=5.5,
            tiltAxisAngle=truth["mdoc_tilt_axis_deg"],
            doseInitial=0.0,
            dosePerFrame=3.0,
        ),
        P(
            "ProtAreTomoAlignRecon",
            "2506",
            inputSetOfTiltSeries="1254.outputTiltSeries",
            skipAlign=False,
            makeTomo=True,
            doEvenOdd=False,
            binFactor=1,
            alignZ=60,
            tomoThickness=40,
            refineTiltAngles=1,
            refineTiltAxis=1,
            doEstimateCtf=True,
            doDW=False,
            reconMethod=0,
            SARTiter=4,
        ),
        P("SphireProtCRYOLOTomoPicking", "1569", inputTomograms="2506.Tomograms"),
    ]
    wf, plan, steps = _load(tmp_path, protocols)
    assert [(s.id, s.step) for s in wf.steps] == [
        ("1254", "import-tilt-series"),
        ("2506", "align"),
        ("2506-reconstruct", "reconstruct"),
    ]
    assert steps["1254"].params["angles"] == "tlt" and steps["1254"].params["pixel_size_a"] == 5.5
    assert steps["2506"].params["align_z_nm"] == pytest.approx(33.0) and steps["2506"].params["binning"] == 1
    assert steps["2506"].params["refine_tilt_offset"] is False  # "measure only"
    assert steps["2506-reconstruct"].params == {
        "even_odd": False,
        "binning": 1,
        "method": "sirt",
        "sirt_iterations": 4,
        "thickness_px": 40,
    }
    assert "workflow step 2506-reconstruct (reconstruct)" in plan["1569"].reason  # the picker's tomograms
    store, runs, _ = _run(tmp_path, wf, ["2506.iterations=1"])
    tomo = store.load(store.resolve(f"{runs['2506-reconstruct'].id}.Tomograms")).items[0]
    assert tomo.shape == (40, 192, 192) and tomo.voxel_size_a == pytest.approx(5.5)


# --- plan-only families ------------------------------------------------------------------------------
def test_imod_ctf_transforms_eraser_and_applied_alignment(tmp_path):
    _need("erase-beads")
    wf, plan, steps = _load(
        tmp_path,
        [
            _import_ts_movies(Path("/data")),
            P("ProtTsMotionCorr", "5", inputTiltSeriesM="2.outputTiltSeriesM", binFactor=2.0, gainRot=1, gainFlip=0),
            P(
                "ProtImodAutomaticCtfEstimation",
                "10",
                inputSetOfTiltSeries="5.TiltSeries",
                defocusTol=200,
                expectedDefocusOrigin=0,
                expectedDefocusValue=4000.0,
                leftDefTol=2000.0,
                rightDefTol=3000.0,
                tileSize=256,
                searchPhaseShift=False,
            ),
            P(
                "ProtImodImportTransformationMatrix",
                "20",
                inputSetOfTiltSeries="5.TiltSeries",
                filesPath="/xf",
                filesPattern="{TS}.xf",
                binningTM=4,
                binningTS=2,
            ),
            P(
                "ProtImodFiducialEraser",
                "30",
                inputSetOfTiltSeries="20.TiltSeries",
                fidDiameter=10.0,
                erasedDiameter=12.0,
            ),
            P("ProtImodApplyTransformationMatrix", "40", inputSetOfTiltSeries="30.TiltSeries", binning=2),
            P("ProtImodTomoReconstruction", "50", inputSetOfTiltSeries="40.TiltSeries", tomoThickness=100),
        ],
    )
    assert steps["5"].params["gain_transpose"] == "transpose" and steps["5"].params["gain_flip"] == "y"
    assert steps["10"].params == {"window_px": 256, "fit_phase": False, "defocus_range_um": [2.0, 7.0]}
    assert steps["20"].params == {"files": "/xf", "pattern": "{TS}.xf", "binning": 2.0}
    # 1 nm margin around 10 nm gold at 2 x 2.76 Å/px (the motion correction binned by 2)
    assert steps["30"].params == {"bead_diameter_nm": 10.0, "detect": True, "expand_px": pytest.approx(10 / 5.52)}
    # the interpolated stack is reconstruct's own work; its binning carries
    assert plan["40"].kind == "folded" and plan["40"].step == "reconstruct"
    assert steps["50"].inputs == {"input": "30.TiltSeries"} and steps["50"].params["binning"] == 2
    assert steps["50"].params["thickness_px"] == 100


def test_warp_single_movies_composed(tmp_path):
    wf, plan, steps = _load(
        tmp_path,
        [
            P(
                "ProtImportMovies",
                "1",
                filesPath="/data/frames",
                filesPattern="*.eer",
                samplingRate=0.8,
                dosePerFrame=2.5,
                voltage=300.0,
            ),
            P(
                "ProtWarpMotionCorr",
                "2",
                inputMovies="1.outputMovies",
                binFactor=2.0,
                range_min=500.0,
                range_max=10.0,
                x=2,
                y=2,
                z=1,
                gainSwap=1,
                gainFlip=2,
                eer_ngroups=20,
            ),
            P(
                "ProtComposeTS",
                "3",
                inputMicrographs="2.outputMicrographs",
                filesPath="/data",
                mdocPattern="TS_*.mdoc",
                excludedWords="bad old",
                isTomo5=True,
            ),
            P("ProtImportMovies", "4", filesPath="/spa", filesPattern="*.tif"),  # no ComposeTS: SPA
        ],
    )
    assert steps["1"].params["files"] == "/data" and steps["1"].params["exclusion_words"] == ["bad", "old"]
    assert steps["1"].params["tomo5"] is True and steps["1"].params["dose_per_tilt_e_a2"] == 2.5
    assert steps["2"].params == {
        "eer_groups": 20,
        "fit_range_a": [500.0, 10.0],
        "motion_grid": [2, 2, 1],
        "gain_transpose": "transpose",
        "gain_flip": "y",
        "estimate_ctf": False,
        "binning": 2,
    }
    assert plan["4"].step is None and "single-particle movies" in plan["4"].reason


def test_protocols_not_run_hand_their_input_on(tmp_path, monkeypatch):
    """An unknown tilt-series protocol, and steps this version lacks: their consumers are fed from the
    nearest mapped ancestor, and the plan says so; a missing normalize folds its binning downstream."""
    import tiltflow.workflow.steps.base as base

    known = base.all_steps()
    monkeypatch.setattr(
        base,
        "all_steps",
        lambda: {k: v for k, v in known.items() if k not in ("dose-filter", "normalize", "assign-alignment")},
    )
    wf, plan, steps = _load(
        tmp_path,
        [
            _import_ts_movies(Path("/data")),
            P("ProtWarpTSMotionCorr", "52", inputTSMovies="2.outputTiltSeriesM", window=128),
            P("ProtCorrectTiltOffset", "60", inputSetOfTiltSeries="52.TiltSeries"),
            P("ProtImodDoseFilter", "70", inputSetOfTiltSeries="60.TiltSeries"),
            P("ProtImodTsNormalization", "80", inputSetOfTiltSeries="70.TiltSeries", binning=4, floatDensities=2),
            P("ProtImodXcorrPrealignment", "90", inputSetOfTiltSeries="80.TiltSeries"),
            P("ProtImodFiducialAlignment", "100", inputSetOfTiltSeries="90.TiltSeries"),
            P(
                "ProtAssignTransformationMatrixTiltSeries",
                "110",
                getTMSetOfTiltSeries="100.TiltSeries",
                setTMSetOfTiltSeries="52.TiltSeries",
            ),
            P("ProtTomo3dReconstrucTomo", "120", inputSetOfTiltSeries="110.tiltSeries", method=0, height=200),
            P("ProtMysteryFilter", "130", inputVolumes="120.tomograms"),
        ],
    )
    assert [s.id for s in wf.steps] == ["2", "52", "100", "120"]
    assert steps["100"].inputs == {"input": "52.TiltSeries"} and steps["100"].params["binning"] == 4
    assert (
        "from 52 (ProtWarpTSMotionCorr): 60 (ProtCorrectTiltOffset), 70 (ProtImodDoseFilter) not run"
        in plan["100"].reason
    )
    assert plan["60"].step is None and "its consumers (100) take its input" in plan["60"].reason
    assert plan["70"].reason.startswith("tiltflow has no 'dose-filter' step in this version")
    assert plan["80"].kind == "folded" and "tiltflow has no 'normalize' step" in plan["80"].reason
    # without assign-alignment the aligned set itself is reconstructed, binned as Scipion's stack was
    assert steps["120"].inputs == {"input": "100.TiltSeries"}
    assert steps["120"].params == {"binning": 4, "method": "wbp", "hamming_start": 0.0, "thickness_px": 200}
    assert plan["130"].reason == "unknown protocol: not a tiltflow step"


def test_input_not_mapped_is_said(tmp_path):
    wf, plan, _ = _load(
        tmp_path,
        [
            _import_ts_movies(Path("/data")),
            P("ProtImodXraysEraser", "3", inputSetOfTiltSeries="2.outputTiltSeriesM"),  # movies, not stacks
            P("ProtImodTomoReconstruction", "4", inputSetOfTiltSeries="3.TiltSeries"),
        ],
    )
    assert [s.id for s in wf.steps] == ["2"]
    assert plan["3"].reason == "input not mapped: 2 (ProtImportTsMovies) gives TiltSeriesM; xray-erase takes TiltSeries"
    assert plan["4"].reason == "input not mapped: 3 (ProtImodXraysEraser) is not run (input not mapped)"
