"""Crash safety (issue 13 item 2): SIGKILL at random points of every step and of ``workflow run``.

For each step, on the tiniest data that step accepts, a chain of runs is killed at random moments
(``KILLS`` kills, 20 by default; ``TILTFLOW_KILLS_PER_STEP`` changes it): each kill falls at a
uniformly random time within the length of an uninterrupted run, and the next attempt is the same
command with ``--continue RUN`` (or the same command again when the kill came before the run
existed). After every kill: ``PRAGMA integrity_check`` is ok, no run reads as 'running', only
finished runs have outputs, and every file an output names is complete on disk. Whenever an
attempt is not killed it must finish, and its outputs must equal those of the uninterrupted run
(sets, numbers, file contents, the run folder's listing); the chain then starts again from a copy
of the project. The chain ends with an unkilled ``--continue``.

The commands run in forked children of a helper process (the zygote) that has imported tiltflow (and
torch) but computed nothing, so a child starts in milliseconds; a kill is a real SIGKILL of that child."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import pkgutil
import random
import re
import shutil
import signal
import sqlite3
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import pytest

from tiltflow.workflow.runner import SCRATCH_LIST

KILLS = int(os.environ.get("TILTFLOW_KILLS_PER_STEP", "20"))
FAST_EXIT = 0.0  # an attempt may also be killed at once (before any work)


# -- forked children ------------------------------------------------------------------------------------
def _preimport() -> None:
    """Import every tiltflow module here, so forked children start at once (no compute runs here)."""
    import torch

    torch.set_num_threads(1)
    import tiltflow

    for mod in pkgutil.walk_packages(tiltflow.__path__, "tiltflow."):
        if mod.name.startswith(("tiltflow.web", "tiltflow.distributed")):
            continue
        try:
            importlib.import_module(mod.name)
        except Exception:  # noqa: BLE001 — an optional layer: the child imports what it needs
            pass


def _child(args: list[str], log: Path) -> None:
    """In the forked child: run the CLI, exit with its code (never returns)."""
    code = 70
    try:
        out = open(log, "w")  # noqa: SIM115
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        sys.stdout = sys.stderr = out
        from tiltflow.cli.main import build_cli

        try:
            build_cli().main([str(a) for a in args], prog_name="tiltflow", standalone_mode=True)
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        out.flush()
    finally:
        os._exit(code)


def attempt(args: list[str], log: Path, kill_after: float | None) -> tuple[str, int | None, float]:
    """Run ``tiltflow ARGS`` in a forked child; SIGKILL it after ``kill_after`` s unless it ended.
    Returns ('killed' | 'exited', exit code, seconds)."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(args, log)
    deadline = None if kill_after is None else t0 + kill_after
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "exited", os.waitstatus_to_exitcode(status), time.monotonic() - t0
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status):  # it ended just before the kill
                return "exited", os.WEXITSTATUS(status), time.monotonic() - t0
            return "killed", None, time.monotonic() - t0
        time.sleep(0.001)


class Zygote:
    """A clean process that has imported tiltflow and forks the attempts (the test process may hold
    torch/OpenMP threads from earlier tests, which forked children would inherit half-made)."""

    def __init__(self) -> None:
        import subprocess

        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from badinput import test_sigkill_steps as m; m.zygote_main()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(Path(__file__).resolve().parents[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request, default=str) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the zygote process ended"
        return json.loads(line)

    def attempt(self, args: list, log: Path, kill_after: float | None) -> tuple[str, int | None, float]:
        r = self.ask(args=[str(a) for a in args], log=str(log), kill_after=kill_after)
        return r["kind"], r["code"], r["took"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def zygote_main() -> None:
    """In the zygote: import everything, then fork one child per request read from stdin."""
    _preimport()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("build"):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _build_base(Path(req["build"]))
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            answer = {"kind": "exited", "code": os.waitstatus_to_exitcode(status), "took": 0.0}
        else:
            kind, code, took = attempt(req["args"], Path(req["log"]), req["kill_after"])
            answer = {"kind": kind, "code": code, "took": took}
        out.write(json.dumps(answer) + "\n")
        out.flush()


ZYGOTE: Zygote | None = None


def must_finish(args: list[str], log: Path, limit_s: float = 600.0) -> float:
    kind, code, took = ZYGOTE.attempt(args, log, limit_s)
    assert kind == "exited" and code == 0, f"{' '.join(map(str, args))}: {kind} {code}\n{log.read_text()[-3000:]}"
    return took


# -- what must hold after a kill ------------------------------------------------------------------------
def _db(root: Path) -> sqlite3.Connection:
    con = sqlite3.connect(root / "project.sqlite", timeout=30)
    con.row_factory = sqlite3.Row
    return con


def _complete(path: Path) -> str | None:
    """Why ``path`` is not a complete file (None when it is)."""
    if not path.is_file():
        return "missing"
    if path.suffix in (".mrc", ".st", ".mrcs", ".ali", ".rec"):
        import mrcfile

        try:
            with mrcfile.mmap(path, mode="r", permissive=False) as mrc:
                np.asarray(mrc.data[-1:]).sum()
        except Exception as err:  # noqa: BLE001
            return f"not a complete MRC ({err})"
    elif path.stat().st_size == 0:
        return "empty"
    return None


def _paths(value, root: Path) -> set[Path]:
    """Every existing-looking file path inside a loaded set (items' files, attrs' paths)."""
    found: set[Path] = set()

    def walk(v):
        if is_dataclass(v) and not isinstance(v, type):
            walk(asdict(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith(str(root)) and Path(v).suffix:
            found.add(Path(v))

    walk(value)
    return found


def check_after_kill(root: Path) -> None:
    if not (root / "project.sqlite").exists():
        return  # killed before the first run existed
    from tiltflow.workflow.store import ProjectStore

    con = _db(root)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'outputs'").fetchone() is None:
            return  # killed while the first import made the project
        unfinished = con.execute(
            "SELECT o.run_id, o.name, r.status FROM outputs o JOIN runs r ON r.id = o.run_id "
            "WHERE r.status != 'finished'"
        ).fetchall()
        assert not unfinished, f"outputs registered on unfinished runs: {[tuple(r) for r in unfinished]}"
    finally:
        con.close()
    store = ProjectStore(root, create=False)
    assert all(r.status != "running" for r in store.runs()), [(r.id, r.status) for r in store.runs()]
    for out in store.outputs():
        for path in _paths(store.load(out), root):
            why = _complete(path)
            assert why is None, f"{out.pointer} names {path.relative_to(root)}: {why}"


# -- equal to an uninterrupted run ------------------------------------------------------------------------
IGNORED_KEYS = {"created", "started", "ended", "elapsed_s", "timings"}
# intermediate folders a run removes once it is finished: a kill between finishing and removing them
# leaves them (the run is complete; nothing names them) — see the issue 13 report
# intermediate files and their list (``runner.SCRATCH_LIST``): a kill between registering the run finished and
# removing them leaves both, and the next command in the project removes them (test_runner_scratch)
SCRATCH = {"sums", SCRATCH_LIST}


def _normal(value, root: Path):
    if is_dataclass(value) and not isinstance(value, type):
        return _normal(asdict(value), root)
    if isinstance(value, dict):
        return {
            str(k): _normal(v, root)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
            if k not in IGNORED_KEYS
        }
    if isinstance(value, (list, tuple)):
        return [_normal(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(str(root), "<project>")
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, 6)
    return value


_STAMP = re.compile(rb"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def _digest(path: Path) -> str:
    """Content digest: MRC data; other files with date-time stamps (CTFFIND's 'run on ...') left out."""
    if path.suffix in (".mrc", ".st", ".mrcs", ".ali", ".rec"):
        import mrcfile

        with mrcfile.open(path, permissive=True) as mrc:
            return hashlib.sha1(np.ascontiguousarray(mrc.data).tobytes()).hexdigest()
    return hashlib.sha1(_STAMP.sub(b"<time>", path.read_bytes())).hexdigest()


def signature(root: Path, run_ids: list[int]) -> dict:
    """The runs' status, outputs (sets as values, paths relative), files named (content digests) and
    their folders' listings (no run.log, no scratch)."""
    from tiltflow.workflow.store import ProjectStore

    store = ProjectStore(root, create=False)
    sig = {}
    for run_id in run_ids:
        run = store.run(run_id)
        outs = {}
        for out in store.outputs(run_id):
            value = store.load(out)
            outs[out.name] = {
                "type": out.type,
                "summary": out.summary,
                "value": _normal(value, root),
                "files": {str(p.relative_to(root)): _digest(p) for p in sorted(_paths(value, root))},
            }
        folder = root / run.run_dir
        listing = sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and p.name != "run.log" and p.relative_to(folder).parts[0] not in SCRATCH
        )
        sig[run_id] = {
            "step": run.step,
            "status": run.status,
            "params": run.params,
            "inputs": run.inputs,
            "outputs": outs,
            "files": listing,
        }
    return sig


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for run_id in want:
        g, w = got[run_id], want[run_id]
        for key in ("step", "status", "params", "inputs", "files"):
            assert g[key] == w[key], f"run {run_id} {key}: {g[key]} != {w[key]}"
        assert g["outputs"].keys() == w["outputs"].keys()
        for name in w["outputs"]:
            assert g["outputs"][name] == w["outputs"][name], f"run {run_id} output {name} differs"


# -- the data: the smallest each step accepts ---------------------------------------------------------
def _build_base(base: Path) -> None:
    """(in a child) movies, stacks, a real alignment; the base project the kill chains start from."""
    from tiltflow.io.mrc import write_mrc
    from tiltflow.testing.config import DemoConfig
    from tiltflow.testing.demo import write_demo_dataset
    from tiltflow.testing.tilt_series import noisy_tilt_series
    from tiltflow.workflow.runner import run_step
    from tiltflow.workflow.store import ProjectStore

    data = base / "data"
    write_demo_dataset(data / "movies", DemoConfig(n_series=1, n_tilts=3, size=(64, 64), n_frames=2, seed=5))
    config = DemoConfig(n_series=1, n_tilts=7, size=(256, 224), n_frames=2, seed=9, bead_diameter_nm=5.0, n_beads=12)
    series = noisy_tilt_series(config)
    stacks, small = data / "stacks", data / "small"
    write_mrc(stacks / "TS_01.st", series.views.numpy(), voxel_size_a=config.pixel_size_a)
    (stacks / "TS_01.rawtlt").write_text("".join(f"{a:.2f}\n" for a in series.mdoc.tolist()))
    middle = series.views[2:5, 80:144, 80:144].numpy()  # 3 views of 64 x 64 px (CTF)
    write_mrc(small / "TS_02.st", middle, voxel_size_a=config.pixel_size_a)
    (small / "TS_02.rawtlt").write_text("".join(f"{a:.2f}\n" for a in series.mdoc[2:5].tolist()))
    store = ProjectStore(base / "p")
    common = {"voltage_kv": 300.0, "tilt_axis_deg": 86.0, "dose_per_tilt_e_a2": 3.0, "pattern": "{TS}.st"}
    run_step(store, "import-movies", {"files": str(data / "movies"), "gain": str(data / "movies" / "gain_ref.gain")})
    run_step(store, "import-tilt-series", {"files": str(stacks), **common})  # run 2
    run_step(store, "import-tilt-series", {"files": str(small), **common})  # run 3
    align = run_step(
        store,
        "align",
        {"method": "fiducial", "binning": 2, "bead_diameter_nm": 5.0},
        {"input": "2"},
        options={"workers": 1},
    )  # run 4
    xf = data / "xf"
    xf.mkdir()
    for name in ("TS_01.xf", "TS_01.tlt"):
        shutil.copy(base / "p" / align.run_dir / name, xf / name)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    global ZYGOTE
    ZYGOTE = Zygote()
    base = tmp_path_factory.mktemp("kills")
    try:
        assert ZYGOTE.ask(build=str(base))["code"] == 0, "could not build the base project"
        yield base
    finally:
        ZYGOTE.close()
        ZYGOTE = None


def _plans(base: Path) -> dict[str, list[str]]:
    d = base / "data"
    return {
        "import-movies": ["--files", d / "movies", "--gain", d / "movies" / "gain_ref.gain"],
        "import-tilt-series": [
            "--files",
            d / "stacks",
            "--pattern",
            "{TS}.st",
            "--voltage",
            "300",
            "--tilt-axis",
            "86",
            "--dose",
            "3",
        ],
        "import-alignment": ["--input", "2", "--files", d / "xf"],
        "motion-ctf": [
            "--input",
            "1",
            "--window",
            "64",
            "--ctf-range",
            "30",
            "8",
            "--motion-grid",
            "1",
            "1",
            "1",
            "--defocus-grid",
            "1",
            "1",
            "1",
        ],
        "ctf": ["--input", "3", "--window", "64", "--ctf-range", "30", "8", "--defocus-grid", "1", "1", "1"],
        "xray-erase": ["--input", "2"],
        "align": ["--input", "4", "--method", "fiducial", "--binning", "2", "--bead-diameter-nm", "5", "--resolve"],
        "reconstruct": ["--input", "4", "--binning", "2", "--thickness-nm", "60"],
        "dose-filter": ["--input", "4"],
        "normalize": ["--input", "4"],
        "erase-beads": ["--input", "4"],
        "assign-alignment": ["--input", "2", "--alignment", "4"],
    }


def _steps() -> list[str]:
    from tiltflow.workflow.steps.base import all_steps

    return sorted(all_steps())


def kill_chain(
    project: Path, pristine: Path, args_for, runs_of, reference: dict, t_ref: float, rng, work: Path
) -> dict:
    """Kill ``KILLS`` attempts at random moments; continue after each; compare every finished one."""
    counts = {"kills": 0, "finished": 0, "resumed": 0, "killed_after_finishing": 0}
    resume: int | None = None
    n, fresh = 0, True  # fresh: this attempt starts from the pristine project
    while counts["kills"] < KILLS:
        n += 1
        kind, code, took = ZYGOTE.attempt(args_for(resume), work / f"attempt{n}.log", rng.uniform(FAST_EXIT, t_ref))
        if kind == "killed":
            counts["kills"] += 1
            fresh = False
            check_after_kill(project)
            resume = _unfinished(project, runs_of)
            counts["resumed"] += resume is not None
            if resume is not None or not _all_there(project, runs_of, reference):
                continue
            counts["killed_after_finishing"] += 1  # it had finished: compare, start again
        else:
            assert code == 0, (
                f"attempt {n} ({'--continue ' + str(resume) if resume else 'fresh'}) exit {code}:\n"
                + (work / f"attempt{n}.log").read_text()[-3000:]
            )
            counts["finished"] += 1
            if fresh:  # a whole run's length: the reference may have run on a busy machine
                t_ref = min(t_ref, took)
            leftovers = (
                [p.name for p in (project / "runs").glob(".disk-reserve-*")] if (project / "runs").is_dir() else []
            )
            assert not leftovers, f"a finished attempt left {leftovers}"
        assert_same(signature(project, runs_of(project)), reference)
        shutil.rmtree(project)
        if pristine.exists():
            shutil.copytree(pristine, project)
        resume, fresh = None, True
    must_finish(args_for(resume), work / "last.log")
    check_after_kill(project)
    assert_same(signature(project, runs_of(project)), reference)
    return counts


def _all_there(project: Path, runs_of, reference: dict) -> bool:
    """Whether the project already holds every run of the reference (finished)."""
    if not (project / "project.sqlite").exists():
        return False
    con = _db(project)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone() is None:
            return False
    finally:
        con.close()
    return len(runs_of(project)) == len(reference)


def _unfinished(project: Path, runs_of) -> int | None:
    """The run a kill left unfinished (to continue), if the kill came after it was created."""
    if not (project / "project.sqlite").exists():
        return None
    con = _db(project)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone() is None:
            return None
        row = con.execute("SELECT id FROM runs WHERE status != 'finished' ORDER BY id DESC").fetchone()
    finally:
        con.close()
    return None if row is None else int(row[0])


@pytest.mark.slow
@pytest.mark.parametrize("step", _steps())
def test_sigkill_at_random_points_of_a_step(base, step, tmp_path, record_property):
    plan = _plans(base).get(step)
    if plan is None:
        pytest.skip(f"no kill plan for step '{step}' (new?) — add its smallest input to _plans()")
    is_import = step.startswith("import-movies") or step == "import-tilt-series"
    pristine = tmp_path / "pristine"
    if is_import:
        pristine.mkdir()  # a first import creates the project
    else:
        shutil.copytree(base / "p", pristine / "p")
    pristine_p = pristine / "p"
    ref = tmp_path / "ref"
    shutil.copytree(pristine, ref)

    def args_for(root: Path):
        def make(resume: int | None) -> list[str]:
            return [step, "-p", root, *plan, "--workers", "1"] + (["--continue", str(resume)] if resume else [])

        return make

    def runs_of(root: Path) -> list[int]:
        con = _db(root)
        try:
            return [int(r[0]) for r in con.execute("SELECT id FROM runs WHERE step = ? ORDER BY id", (step,))]
        finally:
            con.close()

    t_ref = must_finish(args_for(ref / "p")(None), tmp_path / "reference.log")
    reference = signature(ref / "p", runs_of(ref / "p"))
    project = tmp_path / "work"
    shutil.copytree(pristine, project)
    counts = kill_chain(
        project / "p",
        pristine_p,
        args_for(project / "p"),
        runs_of,
        reference,
        t_ref,
        random.Random(f"{step}-kills"),
        tmp_path,
    )
    print(f"{step}: {counts} (an uninterrupted run {t_ref:.2f} s)")
    record_property("kills", counts["kills"])
    record_property("continued_to_the_end", counts["finished"] + 1)


WORKFLOW_STEPS = ["import-movies", "motion-ctf", "xray-erase", "reconstruct"]


def _workflow(base: Path, path: Path) -> Path:
    movies = base / "data" / "movies"
    wf = {
        "tiltflow_workflow": 1,
        "name": "kills",
        "steps": [
            {
                "id": "import-movies",
                "step": "import-movies",
                "params": {"files": str(movies), "gain": str(movies / "gain_ref.gain")},
            },
            {
                "id": "motion-ctf",
                "step": "motion-ctf",
                "inputs": {"input": "import-movies"},
                "params": {"window_px": 64, "motion_grid": [1, 1, 1], "estimate_ctf": False},
            },
            {"id": "xray-erase", "step": "xray-erase", "inputs": {"input": "motion-ctf"}},
            {
                "id": "reconstruct",
                "step": "reconstruct",
                "inputs": {"input": "xray-erase"},
                "params": {"binning": 1, "thickness_nm": 30.0},
            },
        ],
    }
    path.write_text(json.dumps(wf))
    return path


@pytest.mark.slow
def test_sigkill_at_random_points_of_workflow_run(base, tmp_path, record_property):
    wf = _workflow(base, tmp_path / "kills.json")

    def args_for(root: Path):
        def make(resume: int | None) -> list[str]:
            # the first attempt of a chain is a plain run; every later one continues the project
            started = (root / "project.sqlite").exists()
            return ["workflow", "run", wf, "-p", root, "--workers", "1"] + (["--continue"] if started else [])

        return make

    def runs_of(root: Path) -> list[int]:
        con = _db(root)
        try:
            return [int(r[0]) for r in con.execute("SELECT id FROM runs WHERE status = 'finished' ORDER BY id")]
        finally:
            con.close()

    t_ref = must_finish(args_for(tmp_path / "ref")(None), tmp_path / "reference.log")
    reference = signature(tmp_path / "ref", runs_of(tmp_path / "ref"))
    assert [r["step"] for r in reference.values()] == WORKFLOW_STEPS
    (tmp_path / "empty").mkdir()
    project = tmp_path / "work"
    counts = kill_chain(
        project,
        tmp_path / "empty",
        args_for(project),
        _by_label(reference),
        reference,
        t_ref,
        random.Random("workflow-kills"),
        tmp_path,
    )
    print(f"workflow run: {counts} (an uninterrupted run {t_ref:.2f} s)")
    record_property("kills", counts["kills"])
    record_property("continued_to_the_end", counts["finished"] + 1)


def _by_label(reference: dict):
    """The finished runs a continued workflow ends with: one per step, as the reference (a killed and
    continued run keeps its id; runs it replaced are gone or unfinished)."""

    def runs_of(root: Path) -> list[int]:
        con = _db(root)
        try:
            rows = con.execute("SELECT id, step FROM runs WHERE status = 'finished' ORDER BY id").fetchall()
        finally:
            con.close()
        latest = {step: run_id for run_id, step in rows}
        return [latest[s] for s in WORKFLOW_STEPS if s in latest]

    return runs_of


def test_a_run_killed_as_it_was_created_continues(project):
    """Found by the kills above: a kill between registering a run and making its folder left a run that
    ``--continue`` could not open (FileNotFoundError on its run.log)."""
    from tiltflow.workflow.store import ProjectStore

    from ._cli import invoke

    store = ProjectStore(project)
    run = store.create_run("xray-erase", {}, {"input": "2.TiltSeries"})
    shutil.rmtree(project / run.run_dir)  # as if killed just after the commit
    result = invoke(["xray-erase", "-p", project, "--input", "2", "--continue", str(run.id)])
    assert result.exit_code == 0, result.output
    assert ProjectStore(project).run(run.id).status == "finished"
