"""Paths a project stores: relative to the project folder inside it, absolute outside it.

Read back against the folder the project is in now, so a moved or copied project finds its own
files. Absolute paths that point into the project's former folder (written by older versions, or
kept in a key not listed here) are re-rooted: exactly when the project recorded its first folder,
else when the same ``runs/<id>_<step>/...`` path exists in this project.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import (
    AnySet,
    CtfTomo,
    CtfTomoSeries,
    TiltImage,
    TiltSeries,
    TiltSeriesSet,
    Tomogram,
    TomogramSet,
)

# attrs keys whose values are file paths (a string, or a list or dict of them); also *_file(s)/_dir/_path
PATH_KEYS = frozenset(
    {
        "spectrum_file",
        "ctffind",
        "defocus",
        "odd_file",
        "even_file",
        "restacked_from",
        "movie",
        "stack",
        "gain_file",
        "dark_file",
        "mdoc",
        "files",
        "motion_star_dir",
        "xf",
        "tlt",
        "fid",
        "fid_xyz",
        "plots",
    }
)
# typed fields holding paths (a string, or a dict as attrs hold them): stored as attrs' paths are
PATH_FIELDS: dict[type, tuple[str, ...]] = {
    TiltSeriesSet: ("gain_file", "dark_file"),
    TiltSeries: ("motion_star_dir", "alignment"),
    TiltImage: ("movie",),
    CtfTomoSeries: ("ctffind_file", "defocus_file"),
    CtfTomo: ("spectrum_file",),
    Tomogram: ("odd_file", "even_file"),
}
_RUN_DIR = re.compile(r"\d+_")
Fn = Callable[[str], str]


def is_path_key(key: str) -> bool:
    return key in PATH_KEYS or key.endswith(("_file", "_files", "_dir", "_path"))


def map_attrs(attrs: Any, fn: Fn, *, paths: bool = False) -> Any:
    """A copy of ``attrs`` (nested dicts and lists) with ``fn`` applied to every path value: the
    strings under a path key (``files: {"sum": ...}`` too), or every string when ``paths``."""
    if isinstance(attrs, str):
        return fn(attrs) if paths and attrs else attrs
    if isinstance(attrs, list):
        return [map_attrs(v, fn, paths=paths) for v in attrs]
    if not isinstance(attrs, dict):
        return attrs
    return {key: map_attrs(value, fn, paths=paths or is_path_key(str(key))) for key, value in attrs.items()}


def map_set(value: AnySet, fn: Fn, *, files: bool = True, inplace: bool = False) -> AnySet:
    """``value`` (a copy unless ``inplace``) with ``fn`` applied to its attrs' paths and, with
    ``files``, to the items' own files (images, odd/even halves, tomograms)."""
    out = value if inplace else _copy(value)
    _map_fields(out, fn)
    if isinstance(out, TomogramSet):
        for tomo in out.items:
            _map_fields(tomo, fn)
            if files:
                tomo.file = fn(tomo.file)
    elif isinstance(out, TiltSeriesSet):
        for ts in out.items:
            _map_fields(ts, fn)
            for im in ts.images:
                _map_fields(im, fn)
                if files:
                    im.file = fn(im.file)
                    im.odd_file = fn(im.odd_file) if im.odd_file else im.odd_file
                    im.even_file = fn(im.even_file) if im.even_file else im.even_file
    else:
        for ctf_series in out.items:
            _map_fields(ctf_series, fn)
            for ctf in ctf_series.items:
                _map_fields(ctf, fn)
    return out


def _map_fields(obj: Any, fn: Fn) -> None:
    """``fn`` applied to the paths of ``obj``'s attrs and typed path fields (new values, set on ``obj``)."""
    obj.attrs = map_attrs(obj.attrs, fn)
    for name in PATH_FIELDS.get(type(obj), ()):
        value = getattr(obj, name)
        if value:
            setattr(obj, name, fn(value) if isinstance(value, str) else map_attrs(value, fn))


def _copy(value: AnySet) -> AnySet:
    """A copy of the set, its series and their items (attrs are replaced, never changed in place)."""
    out = copy.copy(value)
    if isinstance(out, TomogramSet):
        out.items = [copy.copy(t) for t in out.items]
    elif isinstance(out, TiltSeriesSet):
        out.items = [copy.copy(ts) for ts in out.items]
        for ts in out.items:
            ts.images = [copy.copy(im) for im in ts.images]
    else:
        out.items = [copy.copy(cs) for cs in out.items]
        for cs in out.items:
            cs.items = [copy.copy(c) for c in cs.items]
    return out


def rebase(value: AnySet, old: Path, new: Path) -> AnySet:
    """A copy of ``value`` whose paths under folder ``old`` are under ``new`` instead."""

    def move(text: str) -> str:
        rel = _relative(Path(text), old)
        return text if rel is None else str(new / rel)

    return map_set(value, move)


def _relative(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


class ProjectPaths:
    """Store and read paths of the project in ``root``; ``recorded`` is the folder the project
    was created in (None for projects made before it was recorded: re-rooting then guesses)."""

    def __init__(self, root: Path, recorded: str | None = None):
        self.root = root
        self.recorded = Path(recorded) if recorded else None

    def rel(self, path: Path | str) -> str:
        """Inside the project: relative to it; elsewhere: absolute."""
        p = Path(path).absolute()
        for root in (self.root, self.root.resolve()):
            rel = _relative(p, root)
            if rel is not None:
                return str(rel)
        return str(p)

    def rel_attr(self, text: str) -> str:
        """:meth:`rel` for an attrs value; a relative one is kept (it is relative to the project)."""
        return self.rel(text) if Path(text).is_absolute() else text

    def abs(self, stored: str) -> Path:
        """A stored path as a path of this project's current folder."""
        p = Path(stored)
        if not p.is_absolute():
            return self.root / p
        if _relative(p, self.root) is not None:
            return p
        if self.recorded is not None:
            rel = _relative(p, self.recorded)
            return self.root / rel if rel is not None else p
        return self._guess(p)

    def abs_attr(self, text: str) -> str:
        return str(self.abs(text))

    def _guess(self, p: Path) -> Path:
        """Older projects: ``/old/place/runs/003_ctf/x.png`` -> ``<root>/runs/003_ctf/x.png`` when
        that exists and the old file is gone or belongs to another project folder (a copy)."""
        parts = p.parts
        for i in range(len(parts) - 2, 0, -1):
            if parts[i] != "runs" or not _RUN_DIR.match(parts[i + 1]):
                continue
            candidate = self.root.joinpath(*parts[i:])
            old_root = Path(*parts[:i])
            if candidate.exists() and (not p.exists() or (old_root / "project.sqlite").is_file()):
                return candidate
            break
        return p


def item_files(value: AnySet) -> list[str]:
    """The files the enabled items of a set refer to (images, odd/even halves, tomograms), each once."""
    files: dict[str, None] = {}
    if isinstance(value, TomogramSet):
        files.update(dict.fromkeys(tomo.file for tomo in value.items))
    elif isinstance(value, TiltSeriesSet):
        for ts in value.items:
            if ts.enabled:
                for im in ts.enabled_images:
                    files.update(dict.fromkeys(f for f in (im.file, im.odd_file, im.even_file) if f))
    return list(files)


def missing_files(value: AnySet) -> list[str]:
    """The files of ``value`` (as loaded: absolute) that do not exist."""
    return [f for f in item_files(value) if not Path(f).exists()]


def check_files(value: AnySet, pointer: str, root: Path) -> None:
    """InputError naming the missing files of ``value``; those outside the project are inputs
    it refers to by absolute path, which do not move with the project."""
    missing = missing_files(value)
    if not missing:
        return
    outside = [f for f in missing if _relative(Path(f), root) is None]
    inside = [f for f in missing if f not in outside]
    problems = []
    if outside:
        problems.append(
            f"{pointer}: {len(outside)} input file(s) outside the project folder are missing, e.g. "
            f"{outside[0]} — the project refers to them by absolute path: put them back there, or "
            "import the data again from where they are now"
        )
    if inside:
        problems.append(
            f"{pointer}: {len(inside)} file(s) of the project are missing, e.g. {inside[0]} — "
            "were they deleted? run the step that made them again"
        )
    raise InputError(problems)
