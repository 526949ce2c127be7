"""Issue 14 item 10: Scipion's streaming templates (import movies in streaming, motion correction, compose
tilt series, ...) become the watch mode when run with `workflow run`: the plan says so, the template's
streaming settings are translated (pwem ProtImportFiles' fileTimeout / timeout, tomo ProtComposeTS's
time4NextTilt / percentTiltsRequired), and every streaming template of the corpus follows a live session
to the end — with --watch DIR, or in the template's own files path."""

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_watch import computed

from tiltflow.cli.main import build_cli
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.live import LiveScenario, write_live_session
from tiltflow.workflow.scipion import parse_scipion_template
from tiltflow.workflow.scipion_streaming import parse_duration, streaming_import
from tiltflow.workflow.store import ProjectStore
from tiltflow.workflow.workflow_file import load_workflow

TEMPLATE_SETTINGS = {"settle_s": 30.0, "stop_after_idle_s": 43200.0, "quiet_s": 180.0, "min_fraction": 0.8}


def _templates() -> list[str]:
    from conftest import corpus_dir

    folder = corpus_dir() / "scipion"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json.template")) if folder.is_dir() else []


def _streaming(name: str) -> bool:
    """Does the template's import run in streaming (as Scipion reads it)?"""
    from conftest import corpus_dir

    protocols = parse_scipion_template((corpus_dir() / "scipion" / name).read_text())
    return any(p.get("dataStreaming") is True for p in protocols)


STREAMING = [n for n in _templates() if _streaming(n)]


def _cli(*args, env: dict | None = None):
    return CliRunner(env=env).invoke(build_cli(), [str(a) for a in args], catch_exceptions=False)


def test_scipion_durations():
    assert parse_duration("30") == 30 and parse_duration(25) == 25 and parse_duration("12h") == 43200
    assert parse_duration("3m") == 180 and parse_duration("20s") == 20 and parse_duration("1d 2h 20m 15s") == 94815
    assert parse_duration("10m 3s") == 603 and parse_duration(" 1h ") == 3600
    for bad in ("", None, "soon", "3 minutes", "-5", True):
        assert parse_duration(bad) is None, bad


def test_the_corpus_has_the_2026_streaming_templates(corpus):
    assert {Path(n).name for n in STREAMING} >= {
        "202601_Streaming_HIV.json.template",
        "202601_Streaming_Chlamy.json.template",
        "202601_F_Streaming_HIV.json.template",
        "202601_F_Streaming_Chlamy.json.template",
    }


@pytest.mark.parametrize("name", _templates() or ["(no corpus)"])
def test_streaming_templates_and_only_they_are_watched(corpus, name):
    if not (corpus / "scipion" / name).is_file():
        pytest.skip("no Scipion templates in the corpus")
    wf = load_workflow(corpus / "scipion" / name)
    if name not in STREAMING:
        assert getattr(wf, "streaming", None) is None
        assert not any("streaming" in e.reason for e in wf.plan)
        return
    s = wf.streaming
    imp = next(st for st in wf.steps if st.step == "import-movies")
    assert s.import_id == imp.id and s.protocol == "ProtImportMovies"
    assert s.settings == TEMPLATE_SETTINGS and not s.notes
    assert s.sources == {
        "settle_s": "import fileTimeout 30",
        "stop_after_idle_s": "import timeout 12h",
        "quiet_s": "ComposeTS time4NextTilt 180",
        "min_fraction": "ComposeTS percentTiltsRequired 3 (80 %)",
    }
    assert s.queue == (not Path(name).name.startswith("202601_F_"))  # the F_ ones run without a queue
    plan = {e.id: e for e in wf.plan}
    assert "streaming (dataStreaming): `workflow run` follows the folder" in plan[imp.id].reason
    assert "import fileTimeout 30 -> --settle 30" in plan[imp.id].reason
    compose = next(e for e in wf.plan if e.protocol == "ProtComposeTS")
    assert "ComposeTS time4NextTilt 180 -> --quiet 180" in compose.reason


def test_translations_of_other_versions_and_odd_values():
    def settings(**compose_fields):
        protocols = [
            {
                "object.className": "ProtImportMovies",
                "object.id": "1",
                "filesPath": "/m",
                "filesPattern": "*.tif",
                "samplingRate": 1.0,
                "dataStreaming": True,
                "fileTimeout": "1m",
                "timeout": "2h",
            },
            {"object.className": "ProtMotionCorr", "object.id": "2", "inputMovies": "1.outputMovies"},
            {
                "object.className": "ProtComposeTS",
                "object.id": "3",
                "inputMicrographs": "2.outputMicrographs",
                "filesPath": "/m",
                **compose_fields,
            },
        ]
        from tiltflow.workflow.scipion import scipion_plan

        steps, plan = scipion_plan(protocols)
        return streaming_import(protocols, plan, steps), plan

    s, _ = settings(time4NextTilt="20s", percentTiltsRequired=90)  # a plain percentage (IntParam versions)
    assert s.settings == {"settle_s": 60, "stop_after_idle_s": 7200, "quiet_s": 20, "min_fraction": 0.9}
    s, plan = settings(time4NextTilt="whenever", percentTiltsRequired=30)
    assert s.settings == {"settle_s": 60, "stop_after_idle_s": 7200}
    assert any("time4NextTilt 'whenever': not a duration" in n for n in s.notes)
    assert any("percentTiltsRequired 30" in n for n in s.notes)
    assert "time4NextTilt 'whenever'" in next(e for e in plan if e.id == "1").reason  # said in the plan


def test_dry_run_says_the_workflow_is_watched(corpus, tmp_path):
    if not STREAMING:
        pytest.skip("no streaming template in the corpus")
    path = corpus / "scipion" / STREAMING[0]
    r = _cli("workflow", "run", path, "-p", tmp_path / "p", "--dry-run", "--quiet", "60")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("streaming: ProtImportMovies") and "--settle 30" in lines[1]
    watch = next(line for line in lines if line.startswith("watch: would follow"))
    assert "(not there: give --watch DIR)" in watch  # %(SCIPION_TESTS)s is not set here
    assert "--settle 30 --movie-timeout 300 --quiet 60 --min-fraction 0.8 --stop-after-idle 43200" in watch
    assert not (tmp_path / "p").exists()
    # without the folder: one line saying what to give; --no-watch is the batch run (its import says why not)
    r = _cli("workflow", "run", path, "-p", tmp_path / "p", env={"SCIPION_TESTS": str(tmp_path / "none")})
    assert r.exit_code == 2 and "imports in streaming" in r.stderr and "--watch DIR" in r.stderr
    r = _cli("workflow", "run", path, "-p", tmp_path / "p", "--no-watch", env={"SCIPION_TESTS": str(tmp_path / "none")})
    assert r.exit_code != 0 and "folder not found" in r.stderr


# Each template's steps scaled to the small demo session (its pixel size, 5 nm beads, thin tomograms).
SETS = {
    "HIV": [
        "41473.pixel_size_a={pixel}",
        "41473.gain={gain}",
        "41749.binning=1",
        "41749.bead_diameter_nm=5",
        "41538.bead_diameter_nm=5",
        "41917.window_px=64",
        "41832.binning=1",
        "41874.thickness_px=40",
        "41874.sirt_iterations=5",
    ],
    "Chlamy": [
        "42935.pixel_size_a={pixel}",
        "42935.gain={gain}",
        "42725.binning=2",
        "42725.iterations=1",
        "42725-reconstruct.binning=2",
        "42725-reconstruct.thickness_px=40",
        "42725-ctf.window_px=128",
        "43000.binning=2",
        "43042.thickness_px=40",
        "43042.sirt_iterations=5",
        "43085.thickness_px=40",
    ],
}
FOLDER = {"HIV": "empiar_10164_HIV_frames", "Chlamy": "chlamy_visual_proteomics"}  # the templates' own paths


@pytest.mark.slow
@pytest.mark.parametrize("name", STREAMING or ["(no corpus)"])
def test_every_streaming_template_follows_a_live_session(corpus, name, tmp_path, one_torch_thread):
    """The F_ templates in their own files path (SCIPION_TESTS), the others with --watch DIR; the Chlamy ones
    with their Tomo5 mdocs in a subfolder per grid (ComposeTS's '*/frames/*.mdoc')."""
    if name not in STREAMING:
        pytest.skip("no streaming template in the corpus")
    kind = "Chlamy" if "Chlamy" in name else "HIV"
    own_path = Path(name).name.startswith("202601_F_")
    root = tmp_path / "tests" / FOLDER[kind]  # = %(SCIPION_TESTS)s/<the template's folder>
    where = root / "grid1" / "frames" if kind == "Chlamy" else root
    config = DemoConfig(
        n_series=2,
        n_tilts=5,
        size=(192, 192),
        n_frames=3,
        seed=8,
        bead_diameter_nm=5.0,
        n_beads=12,
        flavour="tomo5" if kind == "Chlamy" else "serialem",
    )
    writer = threading.Thread(target=write_live_session, args=(where, config, LiveScenario(interval_s=0.4, pieces=2)))
    writer.start()
    while not (where / "gain_ref.gain").exists():
        time.sleep(0.05)
    sets = [s.format(pixel=config.pixel_size_a, gain=where / "gain_ref.gain") for s in SETS[kind]]
    args = [
        "workflow",
        "run",
        corpus / "scipion" / name,
        "-p",
        tmp_path / "p",
        *(() if own_path else ("--watch", root)),
        "--interval",
        "0.2",
        "--settle",
        "0.3",
        "--quiet",
        "2",
        "--movie-timeout",
        "20",
        "--stop-after-idle",
        "3",
        "--json",
        "--workers",
        "1",
        *[x for s in sets for x in ("--set", s)],
    ]
    result = _cli(*args, env={"SCIPION_TESTS": str(tmp_path / "tests")})
    writer.join()
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert "streaming: ProtImportMovies" in err and f"watching {root}" in err
    assert "settings from the Scipion workflow" in err and "--min-fraction 0.8 (ComposeTS percentTiltsRequired" in err
    state = json.loads(result.stdout)
    assert [s["state"] for s in state["series"]] == ["done", "done"], err
    movies = computed(tmp_path / "p")
    assert len(movies) == len(set(movies)) == 10  # every tilt computed once, as it came
    wf = load_workflow(corpus / "scipion" / name)
    runs = ProjectStore(tmp_path / "p", create=False).runs()
    for ts in (s["ts"] for s in state["series"]):  # each series ran the template's whole chain
        assert sorted(r.label for r in runs if r.label.endswith(f":{ts}")) == sorted(f"{s.id}:{ts}" for s in wf.steps)
    assert all(r.status == "finished" for r in runs)


def test_scanner_follows_mdoc_patterns_with_subfolders(tmp_path):
    """ComposeTS's '*/frames/*.mdoc': mdocs one folder per grid, movies beside them or one folder down;
    exclusion words leave mdocs out; a project inside the watched folder is not scanned."""
    from tiltflow.workflow.watch.scanner import FolderScanner

    for rel in (
        "g1/frames/Position_1.mdoc",
        "g1/frames/Position_1_tgt.mdoc",
        "g1/frames/frames/a.tif",
        "g2/frames/Position_2.mdoc",
        "g2/frames/b.tif",
        "top.mdoc",
        "g1/other/c.mdoc",
        "P/runs/1_motion-ctf/sums/x.mrc",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    scan = FolderScanner(
        tmp_path, mdoc_pattern="*/frames/*.mdoc", exclude_words=("_tgt",), ignore=(tmp_path / "P",)
    ).poll()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in scan.mdocs) == [
        "g1/frames/Position_1.mdoc",
        "g2/frames/Position_2.mdoc",
    ]
    assert sorted(p.name for p in scan.movies) == ["a.tif", "b.tif"]
    flat = FolderScanner(tmp_path, mdoc_pattern="{TS}.mdoc").poll()  # the usual flat layout is unchanged
    assert [p.name for p in flat.mdocs] == ["top.mdoc"] and not flat.movies
