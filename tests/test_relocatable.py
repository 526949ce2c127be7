"""A project folder can be moved or copied: every path it stores inside itself is relative to it,
so `show`, the viewer (spectra, thumbnails) and exports use the files of the folder it is in now."""

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.testing.demo import DemoConfig, write_demo_dataset
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.paths import check_files, missing_files
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

TOKEN = "relocatable-token-0123456789"
FAST = {"window_px": 64, "ctf_range_a": [30, 8], "motion_grid": [1, 1, 1], "defocus_grid": None}


@pytest.fixture(scope="module")
def original(tmp_path_factory, one_torch_thread) -> Path:
    """Import + motion-ctf of a tiny demo; the raw data stay outside the project."""
    base = tmp_path_factory.mktemp("reloc")
    demo = base / "raw"
    write_demo_dataset(demo, DemoConfig(n_series=1, n_tilts=5, size=(128, 128), n_frames=3, seed=8), force=True)
    store = ProjectStore(base / "proj")
    imp = run_step(
        store, "import-movies", {"files": str(demo), "pattern": "*.mdoc", "gain": str(demo / "gain_ref.gain")}
    )
    run_step(store, "motion-ctf", FAST, {"input": str(imp.id)})
    return store.root


def invoke(*args) -> str:
    result = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def client_for(root: Path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tiltflow.web.app import TOKEN_HEADER, create_app

    return TestClient(create_app(ProjectStore(root, create=False), TOKEN), headers={TOKEN_HEADER: TOKEN})


def spectrum_files(root: Path) -> list[Path]:
    return sorted((root / "runs" / "002_motion-ctf" / "ctf").glob("TS_01_*.png"))


def check_works_in(root: Path, old: Path) -> None:
    """`show`, the viewer's spectrum and thumbnail, and an export use the files under ``root``."""
    assert "2.CTFTomoSeries" in invoke("show", "-p", root)
    assert "2.CTFTomoSeries" in invoke("show", "-p", root, "2")
    # the copy's own files, made different from the original's
    spectrum = spectrum_files(root)[0]
    order = int(spectrum.stem.rsplit("_", 1)[1])
    shutil.copyfile(spectrum_files(root)[-1], spectrum)
    ctffind = root / "runs" / "002_motion-ctf" / "TS_01_ctffind.txt"
    ctffind.write_text(ctffind.read_text() + "# this folder's copy\n")
    client = client_for(root)
    r = client.get(f"/api/outputs/2.CTFTomoSeries/ctf/TS_01/{order}/spectrum.png")
    assert r.status_code == 200 and r.headers["x-spectrum-source"] == "file", r.text
    assert r.content == spectrum.read_bytes()
    r = client.get("/api/outputs/2.TiltSeries/series/TS_01/views/1/thumbnail.png")
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    assert client.get("/api/project").json()["root"] == str(root)
    out = root.parent / f"export_{root.name}"
    invoke("export", "2.CTFTomoSeries", "-p", root, "--format", "ctffind", "--out", out)
    assert (out / "TS_01_ctffind.txt").read_text() == ctffind.read_text()
    value = ProjectStore(root, create=False).load(ProjectStore(root, create=False).resolve("2.CTFTomoSeries"))
    files = [c.spectrum_file for s in value.items for c in s.items] + [value.items[0].ctffind_file]
    assert all(Path(f).is_relative_to(root) for f in files)
    assert not any(Path(f).is_relative_to(old) for f in files)


def test_project_stores_no_path_of_its_own_folder(original):
    """Paths inside the project are relative (the folder's own name appears only as where it was made)."""
    con = sqlite3.connect(original / "project.sqlite")
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    hits = [line for line in dump.splitlines() if str(original) in line]
    assert len(hits) == 1 and "'root'" in hits[0], hits[:3]
    raw = str(original.parent / "raw")
    assert raw in dump  # inputs outside the project stay absolute


def test_copied_project_uses_its_own_files(original, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    check_works_in(copy, original)
    assert spectrum_files(original)[0].read_bytes() != spectrum_files(copy)[0].read_bytes()


def test_moved_project_works(original, tmp_path):
    staging = tmp_path / "staging"
    shutil.copytree(original, staging)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    staging.rename(moved)
    check_works_in(moved, staging)


def _legacy(root: Path) -> None:
    """Make a project look as older versions wrote it: stored paths absolute, no recorded folder."""
    con = sqlite3.connect(root / "project.sqlite")
    try:
        con.execute("DELETE FROM meta WHERE key='root'")
        for table, columns in (("ctf_items", ("spectrum_file",)), ("ctf_series", ("ctffind_file", "defocus_file"))):
            for column in columns:
                for rid, path in con.execute(f"SELECT id, {column} FROM {table}").fetchall():
                    if path and not Path(path).is_absolute():
                        con.execute(f"UPDATE {table} SET {column}=? WHERE id=?", (str(root / path), rid))
        con.commit()
    finally:
        con.close()


def test_older_projects_with_absolute_paths_are_rerooted(original, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(original, old)
    _legacy(old)
    copied = tmp_path / "copied"
    shutil.copytree(old, copied)  # the old one is still there: the copy must not use its files
    check_works_in(copied, old)
    moved = tmp_path / "moved"
    old.rename(moved)  # the old folder is gone
    check_works_in(moved, old)


def test_missing_inputs_outside_the_project_are_named(original, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    store = ProjectStore(copy, create=False)
    movies = store.load(store.resolve("1.TiltSeriesM"))
    assert missing_files(movies) == []
    check_files(movies, "1.TiltSeriesM", store.root)
    gone = Path(movies.items[0].images[0].file)
    hidden = gone.with_name(gone.name + ".away")
    gone.rename(hidden)
    try:
        assert missing_files(movies) == [str(gone)]
        with pytest.raises(InputError) as err:
            check_files(movies, "1.TiltSeriesM", store.root)
        text = "; ".join(err.value.problems)
        assert str(gone) in text and "outside the project" in text
    finally:
        hidden.rename(gone)
