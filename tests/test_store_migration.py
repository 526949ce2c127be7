"""Schema migrations (issue 16 item 3): a project written by the version-1 store (made here by the
code of the last version-1 commit) opens with today's code, is migrated in one transaction with a
copy of its database kept beside it, and shows the same values through the sets, `show`, the
viewer's data layer and exports. A newer project is refused in one line; a migration that fails
leaves the project as it was."""

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.workflow import migrations
from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.store import SCHEMA_VERSION, ProjectStore

V1_COMMIT = "85891fd40870f2c070aeb8630e301986059e2b26"  # the last commit whose store is version 1
PROBE = Path(__file__).with_name("store_migration_probe.py")
REPO = Path(__file__).resolve().parents[1]
MOVED = {
    "tilt_images": ("movie", "total_motion_px", "defocus_u_a", "refined_tilt_angle_deg", "residual_px"),
    "tilt_series": ("alignment", "motion_star_dir"),
    "ctf_items": ("spectrum_file", "ring_strength"),
    "ctf_series": ("ctf_verdict", "ctffind", "defocus"),
    "tomograms": ("method", "source", "ctf", "odd_file"),
    "outputs": ("gain_file", "odd_even"),
}  # version-1 attrs keys that became columns


@pytest.fixture(scope="module")
def v1_code(tmp_path_factory) -> Path:
    """``src/`` of the version-1 commit, from git (skipped where the history is not at hand)."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", V1_COMMIT, "src/tiltflow"],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git commit {V1_COMMIT[:7]} (the version-1 code) is not available")
    out = tmp_path_factory.mktemp("v1code")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(out, filter="data")
    return out / "src"


def run_v1(src: Path, *args) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(PROBE), *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def v1_project(v1_code, tmp_path_factory) -> Path:
    """BASE/proj: import-movies -> motion-ctf -> align -> reconstruct by the version-1 code, BASE/v1.json
    what that code shows of it, BASE/pristine an untouched copy."""
    base = tmp_path_factory.mktemp("v1project")
    run_v1(v1_code, "build", base)
    run_v1(v1_code, "probe", base / "proj", base / "v1.json")
    assert schema_of(base / "proj" / "project.sqlite") == 1
    shutil.copytree(base / "proj", base / "pristine")
    return base


def schema_of(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    finally:
        con.close()


def dump(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def pristine_copy(v1_project: Path, tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    shutil.copytree(v1_project / "pristine", root)
    return root


def _shown(text: str) -> str:
    """`show` without its citations block (newer than version 1)."""
    lines, skipping = [], False
    for line in text.splitlines():
        skipping = line.strip() == "methods:" or (skipping and line.startswith("    "))
        if not skipping:
            lines.append(line)
    return "\n".join(lines)


def _exported(files: dict) -> dict:
    """Export files without the run date CTFFIND's header carries."""
    return {name: re.sub(r"run on [^\n]*", "", text) for name, text in files.items()}


def test_a_version_1_project_migrates_and_shows_the_same_values(v1_project, one_torch_thread):
    from store_migration_probe import probe

    root = v1_project / "proj"
    db = root / "project.sqlite"
    before = json.loads((v1_project / "v1.json").read_text())
    view = before["sets"]["3.TiltSeries"]["value"]["items"][0]
    assert {"movie", "total_motion_px", "refined_tilt_angle_deg", "defocus_u_a"} <= set(view["images"][0]["attrs"])
    assert {"alignment", "motion_star_dir"} <= set(view["attrs"])  # the values to migrate are there
    after = probe(root)  # opens it: migrated
    assert schema_of(db) == SCHEMA_VERSION == 2
    backup = root / "project.sqlite.v1.bak"
    assert schema_of(backup) == 1 and dump(backup) == dump(v1_project / "pristine" / "project.sqlite")
    assert after["sets"] == before["sets"]  # every value, moved to its field, is as it was
    assert after["viewer"] == before["viewer"]
    assert {k: _shown(v) for k, v in after["show"].items()} == {k: _shown(v) for k, v in before["show"].items()}
    assert {k: _exported(v) for k, v in after["exports"].items()} == {
        k: _exported(v) for k, v in before["exports"].items()
    }
    con = sqlite3.connect(db)
    try:
        left = {
            (table, key)
            for table, keys in MOVED.items()
            for (text,) in con.execute(f"SELECT attrs FROM {table}")
            for key in keys
            if key in json.loads(text or "{}")
        }
    finally:
        con.close()
    assert not left
    stamp = backup.stat().st_mtime_ns
    ProjectStore(root, create=False).runs()  # opened again: nothing left to migrate
    assert backup.stat().st_mtime_ns == stamp and schema_of(db) == SCHEMA_VERSION


def test_a_project_newer_than_the_code_is_refused_in_one_line(v1_project, tmp_path):
    root = pristine_copy(v1_project, tmp_path)
    ProjectStore(root, create=False)
    con = sqlite3.connect(root / "project.sqlite")
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = dump(root / "project.sqlite")
    with pytest.raises(ProjectError, match="newer tiltflow") as err:
        ProjectStore(root, create=False)
    assert "\n" not in str(err.value) and f"schema {SCHEMA_VERSION + 1}" in str(err.value)
    result = CliRunner().invoke(build_cli(), ["show", "-p", str(root)])
    assert result.exit_code != 0
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {err.value}"]
    assert dump(root / "project.sqlite") == before


def test_a_failed_migration_leaves_the_project_and_its_copy_as_they_were(v1_project, tmp_path, monkeypatch):
    root = pristine_copy(v1_project, tmp_path)
    db = root / "project.sqlite"
    before = dump(db)

    to_v2 = migrations.MIGRATIONS[0]

    def half_then_fail(con):
        to_v2(con)  # every change made, then a failure
        raise RuntimeError("disk trouble")

    monkeypatch.setattr(migrations, "MIGRATIONS", [half_then_fail])
    with pytest.raises(ProjectError, match="unchanged") as err:
        ProjectStore(root, create=False)
    message = str(err.value)
    assert "\n" not in message and "schema 1 to 2" in message and "project.sqlite.v1.bak" in message
    assert dump(db) == before and schema_of(db) == 1
    assert dump(root / "project.sqlite.v1.bak") == before
    monkeypatch.undo()
    ProjectStore(root, create=False)  # the next open migrates it
    assert schema_of(db) == SCHEMA_VERSION


def test_a_new_project_starts_at_the_current_version(tmp_path):
    store = ProjectStore(tmp_path / "new")
    store.create_run("import-movies", {}, {})
    assert schema_of(store.db_path) == SCHEMA_VERSION
    assert not list(store.root.glob("*.bak"))
