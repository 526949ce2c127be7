"""Helpers of the bad-input catalogue: the CLI, a small stack, and the check that a refusal is one
line, exit code 2, no traceback, and leaves the project as it was (database rows and files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mrcfile
import numpy as np
from click.testing import CliRunner

from tiltflow.cli.main import build_cli

STACK_ANGLES = (-30.0, -15.0, 0.0, 15.0, 30.0)


def write_stack(
    folder: Path, name: str = "TS_A", *, size: int = 128, pixel_a: float = 2.0, angles=STACK_ANGLES
) -> Path:
    """An MRC stack with a ``.rawtlt`` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stack = folder / f"{name}.st"
    with mrcfile.new(stack, overwrite=True) as mrc:
        mrc.set_data(rng.normal(size=(len(angles), size, size)).astype(np.float32))
        mrc.voxel_size = pixel_a
    (folder / f"{name}.rawtlt").write_text("".join(f"{a}\n" for a in angles))
    return stack


def invoke(args: list[str]):
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def project_state(root: Path) -> tuple[list[str], list[str]]:
    """The database as SQL (every table, every row) and the project's file listing."""
    con = sqlite3.connect(root / "project.sqlite")
    try:
        dump = list(con.iterdump())
    finally:
        con.close()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm")))
    return dump, files


def assert_refused(result, needles: list[str], root: Path | None, before=None) -> str:
    """Exit 2, one output line holding every needle, no traceback, the project unchanged."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if root is not None:
        assert project_state(root) == before, "a refused command changed the project"
    return lines[0]


def project_state_readonly(root: Path) -> tuple[list[str], list[str]]:
    """:func:`project_state` without writing a byte (for a project whose disk is full)."""
    from tiltflow.workflow.diskspace import read_only_connection
    from tiltflow.workflow.errors import DiskFull

    con = read_only_connection(root / "project.sqlite", DiskFull(root, 0.0))
    try:
        dump = list(con.iterdump())
    finally:
        con.close()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm")))
    return dump, files
