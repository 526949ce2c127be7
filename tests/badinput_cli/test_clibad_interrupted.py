"""A killed run is reported 'interrupted' (with how to continue) in `show` and the viewer, not 'running'."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.web.project_data import project_info
from tiltflow.workflow.store import ProjectStore

REGISTER_AND_WAIT = textwrap.dedent("""
    import sys, time
    from tiltflow.workflow.store import ProjectStore
    run = ProjectStore(sys.argv[1]).create_run("import-tilt-series", {}, {})
    print(run.id, flush=True)
    time.sleep(120)
""")


def test_killed_run_shows_interrupted_with_hint(tmp_path):
    root = tmp_path / "p"
    proc = subprocess.Popen(
        [sys.executable, "-c", REGISTER_AND_WAIT, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        run_id = int(proc.stdout.readline())
        store = ProjectStore(root, create=False)
        assert store.run(run_id).status == "running"  # its process is alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    run = store.run(run_id)
    assert run.status == "interrupted"
    assert f"--continue {run_id}" in run.error
    out = CliRunner().invoke(build_cli(), ["show", "-p", str(root)])
    assert out.exit_code == 0 and "interrupted" in out.output and f"--continue {run_id}" in out.output
    assert "running" not in out.output
    one = CliRunner().invoke(build_cli(), ["show", "-p", str(root), str(run_id)])
    assert "interrupted" in one.output and f"--continue {run_id}" in one.output
    info = project_info(store)  # the viewer's data layer
    assert info.runs[0].status == "interrupted" and f"--continue {run_id}" in info.runs[0].error


def test_reused_pid_counts_as_gone(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("import-tilt-series", {}, {})
    assert store.run(run.id).status == "running"  # this very process
    with store.transaction() as con:  # the pid now names a process started later
        con.execute("UPDATE run_process SET proc_start = 'not-this-one' WHERE run_id = ?", (run.id,))
    if os.path.exists(f"/proc/{os.getpid()}/stat"):
        assert store.runs()[0].status == "interrupted"


def test_run_of_another_host_or_without_record_stays_running(tmp_path):
    store = ProjectStore(tmp_path / "p")
    a = store.create_run("import-tilt-series", {}, {})
    b = store.create_run("import-tilt-series", {}, {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.transaction() as con:
        con.execute(
            "UPDATE run_process SET pid = ?, host = ? WHERE run_id = ?",
            (dead.pid, socket.gethostname() + "-elsewhere", a.id),
        )
        con.execute("DELETE FROM run_process WHERE run_id = ?", (b.id,))  # a run written by an older tiltflow
    assert [r.status for r in store.runs()] == ["running", "running"]


def test_finished_and_resumed_runs_are_not_touched(tmp_path):
    store = ProjectStore(tmp_path / "p")
    run = store.create_run("import-tilt-series", {}, {})
    store.finish_run(run.id, {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.transaction() as con:
        con.execute("UPDATE run_process SET pid = ? WHERE run_id = ?", (dead.pid, run.id))
    assert store.run(run.id).status == "finished"
    store.set_status(run.id, "running")  # --continue: this process takes it over
    assert store.run(run.id).status == "running"
