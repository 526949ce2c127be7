"""``tiltflow export ... --out DIR`` on a full disk (issue 13): exit 2 and the one ``disk full at PATH
(N MB free)`` line naming the destination (never the source file being copied), and no half-written
file left in ``--out``."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from ._cli import invoke
from .test_disk_full import one_disk_full_line


def _copy_that_fills_the_disk(src, dst, **_kw):
    """What ``shutil.copyfile`` does when the disk fills part-way: some bytes land in ``dst``, and the
    error names the *source* (``filename``) and the destination only as ``filename2``."""
    Path(dst).write_bytes(b"\0" * 1000)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))


def _write_text_that_fills_the_disk(self, *_a, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write that fails on flush names no file


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("how", ["copy", "text"])
def test_export_to_a_full_disk_names_the_destination(project, tmp_path, monkeypatch, how):
    out = tmp_path / "exported"
    if how == "copy":
        monkeypatch.setattr(shutil, "copyfile", _copy_that_fills_the_disk)
    else:
        monkeypatch.setattr(Path, "write_text", _write_text_that_fills_the_disk)
    result = invoke(["export", "2", "-p", project, "--format", "imod", "--out", out])
    monkeypatch.undo()
    line = one_disk_full_line(result, str(out))
    named = Path(line.split("disk full at ", 1)[1].split(" (")[0])
    assert named == out or named.is_relative_to(out), f"the line names the source, not the destination: {line}"
    names = _files(out)
    assert not [n for n in names if ".tmp" in n], names
    if how == "copy":
        assert "TS_A.st" not in names, "the half-copied stack was left in --out"
