"""Poll an acquisition folder: which movies are complete, which mdocs changed.

Polling, not filesystem events: facility data sit on network filesystems where inotify-style
events do not arrive. A movie is complete when its size and mtime have not changed for
``settle_s`` (first sight counts from its mtime, so a restart does not wait again) and it decodes:
its header reads (a truncated TIFF or MRC is caught there) and, for TIFF/EER, its last frame
decodes. The folder and its direct subfolders are scanned (movies often sit in ``frames/``), and
deeper when the mdoc pattern names subfolders (``*/frames/*.mdoc``, as in Scipion's Chlamy templates:
the mdocs' folders and their direct subfolders); a pattern's ``{TS}`` reads as ``*``, as in
import-movies, and mdocs whose name holds an exclusion word are left out.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tiltflow.io.mdoc_resolve import MdocError, RawMdoc, read_raw
from tiltflow.io.movies import MOVIE_SUFFIXES, MovieError, read_movie_header


@dataclass
class FileState:
    path: Path
    size: int
    mtime: float
    first_seen: float
    changed: float  # when its size or mtime last changed (as observed)
    status: str = "growing"  # movies: growing | complete | bad; mdocs: read | unreadable
    error: str | None = None
    checked: tuple[int, float] | None = None  # (size, mtime) of the last decode / parse
    raw: RawMdoc | None = None  # mdocs: the parsed text

    def stable_for(self, now: float) -> float:
        return now - self.changed


@dataclass
class Scan:
    movies: dict[Path, FileState] = field(default_factory=dict)
    mdocs: dict[Path, FileState] = field(default_factory=dict)
    newest_change: float = 0.0  # latest change of any file (idle detection)

    def by_name(self) -> dict[str, list[Path]]:
        names: dict[str, list[Path]] = {}
        for p in self.movies:
            names.setdefault(p.name.lower(), []).append(p)
        return names


def movie_decodes(path: Path) -> str | None:
    """None when the movie's header reads and (TIFF/EER) its last frame decodes; else one line."""
    try:
        header = read_movie_header(path)
        if header.format in ("tiff", "eer"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                tif.pages[-1].asarray()
    except MovieError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 — decoders raise many kinds on partial files
        return f"{path}: cannot decode its last frame ({err}) — still being written, or truncated"
    return None


class FolderScanner:
    """Keeps the state of every movie and mdoc of ``folder`` across polls."""

    def __init__(
        self,
        folder: Path,
        *,
        mdoc_pattern: str = "*.mdoc",
        settle_s: float = 10.0,
        ignore: tuple[Path, ...] = (),
        exclude_words: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.folder, self.pattern, self.settle_s, self.clock = Path(folder), mdoc_pattern, settle_s, clock
        self.parts = tuple(
            p for p in mdoc_pattern.replace("{TS}", "*").replace("\\", "/").split("/") if p not in ("", ".")
        )
        self.depth = max(1, len(self.parts))  # subfolder levels scanned: the mdocs' and one more
        self.ignore = {Path(p).absolute() for p in ignore}
        self.exclude_words = tuple(w for w in exclude_words if w)
        self.scan = Scan()

    def is_mdoc(self, path: Path) -> bool:
        """Does ``path`` (under the folder) match the mdoc pattern (and no exclusion word)?"""
        try:
            rel = path.relative_to(self.folder).parts
        except ValueError:
            return False
        return (
            len(rel) == len(self.parts)
            and all(fnmatch.fnmatch(a, b) for a, b in zip(rel, self.parts, strict=False))
            and not any(w in path.name for w in self.exclude_words)
        )

    def _listing(self) -> list[os.DirEntry]:
        entries: list[os.DirEntry] = []

        def walk(folder: str, level: int) -> None:
            try:
                found = list(os.scandir(folder))
            except OSError:
                return
            for e in found:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=True):
                        if level < self.depth and Path(e.path).absolute() not in self.ignore:
                            walk(e.path, level + 1)
                    elif e.is_file():
                        entries.append(e)
                except OSError:
                    continue

        walk(str(self.folder), 0)
        return entries

    def poll(self) -> Scan:
        now = self.clock()
        seen_movies: dict[Path, FileState] = {}
        seen_mdocs: dict[Path, FileState] = {}
        for e in self._listing():
            path = Path(e.path)
            if path.absolute() in self.ignore or path.name.startswith("."):
                continue
            is_mdoc = self.is_mdoc(path)
            if not is_mdoc and path.suffix.lower() not in MOVIE_SUFFIXES:
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            book = self.scan.mdocs if is_mdoc else self.scan.movies
            old = book.get(path)
            if old is None:
                old = FileState(path, st.st_size, st.st_mtime, now, min(now, st.st_mtime))
            elif (old.size, old.mtime) != (st.st_size, st.st_mtime):
                old.size, old.mtime, old.changed = st.st_size, st.st_mtime, now
            (seen_mdocs if is_mdoc else seen_movies)[path] = old
        self.scan.movies, self.scan.mdocs = seen_movies, seen_mdocs
        for f in seen_movies.values():
            self._check_movie(f, now)
        for f in seen_mdocs.values():
            self._read_mdoc(f)
        changes = [f.changed for f in (*seen_movies.values(), *seen_mdocs.values())]
        self.scan.newest_change = max(changes, default=self.scan.newest_change)
        return self.scan

    def _check_movie(self, f: FileState, now: float) -> None:
        key = (f.size, f.mtime)
        if f.checked == key and f.status in ("complete", "bad"):
            return
        if f.checked != key and f.status != "growing":
            f.status, f.error = "growing", None  # rewritten: check again once it settles
        if f.size == 0 or f.stable_for(now) < self.settle_s:
            return
        f.error = movie_decodes(f.path)
        f.status, f.checked = ("bad" if f.error else "complete"), key

    def _read_mdoc(self, f: FileState) -> None:
        key = (f.size, f.mtime)
        if f.checked == key:
            return
        try:
            f.raw, f.status, f.error = read_raw(f.path), "read", None
        except MdocError as err:
            f.raw, f.status, f.error = None, "unreadable", str(err)
        f.checked = key
