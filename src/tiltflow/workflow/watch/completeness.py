"""Which tilts of which series are in, and when a series is complete (pure: a scan and a clock in,
series views and one-line events out).

A tilt is listed by its series' mdoc (SerialEM writes it as it goes, Tomo5 at the end) or, before
a Tomo5 mdoc exists, by a Tomo5 movie name ``<Position>_<NNN>_<angle>_<date>_<time>...``. A listed
tilt whose movie is not complete ``movie_timeout_s`` after it was listed is left out (one line).
A series closes when nothing of it is pending and: its expected tilts are all in (``--tilts``, or
a Tomo5 mdoc's count); or a later series has started (one microscope) and it has been quiet for a
grace time; or it has been quiet for ``quiet_s``. It is processed when at least ``min_fraction`` of
the expected tilts (else the session's usual count, else those listed) are in, else reported
aborted. A series closed before re-closes after the grace time when tilts come late.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tiltflow.io.mdoc_resolve import (
    _TOMO5_MOVIE,
    MdocError,
    RawMdoc,
    axis_from_titles,
    check_tilt_series,
    movie_basename,
    ts_id_from_name,
)
from tiltflow.workflow.watch.scanner import FileState, Scan
from tiltflow.workflow.watch.settings import WatchSettings


@dataclass
class Tilt:
    name: str  # movie file name as listed (or found)
    path: Path | None  # the movie file, once found
    angle: float | None
    section: str | None  # mdoc section label, None when not listed yet (Tomo5)
    first_seen: float
    state: str = "missing"  # missing | growing | complete | dropped
    note: str | None = None


@dataclass
class SeriesView:
    ts_id: str
    mdoc: Path | None = None
    flavour: str | None = None  # serialem | tomo5
    final_mdoc: bool = False  # the mdoc lists the whole series (Tomo5)
    tilts: list[Tilt] = field(default_factory=list)
    first_seen: float = 0.0
    last_activity: float = 0.0
    last_tilt: float = 0.0  # when its newest complete movie last changed (lag is measured from it)
    state: str = "collecting"  # collecting | closed | aborted
    reason: str = ""
    expected: int | None = None

    def accepted(self) -> list[Tilt]:
        return [t for t in self.tilts if t.state == "complete"]

    def pending(self) -> list[Tilt]:
        return [t for t in self.tilts if t.state in ("missing", "growing")]


def tomo5_series_of(name: str) -> str | None:
    """``Position_2_001_0.00_20240315_094512_fractions.tiff`` -> ``Position_2``."""
    m = _TOMO5_MOVIE.match(name)
    if not m:
        return None
    return ts_id_from_name(m.group("prefix")[: -len(m.group("index")) - 2] + ".mdoc")


class SeriesTracker:
    def __init__(self, settings: WatchSettings):
        self.s = settings
        self.series: dict[str, SeriesView] = {}
        self.first_seen: dict[tuple[str, str], float] = {}  # (ts, movie name) -> when listed
        self.closed_once: dict[str, tuple[tuple, str]] = {}  # ts -> (tilts, why) when it first closed
        self.counts: dict[str, int] = {}  # ts -> tilts listed when it closed
        self._said: set[str] = set()
        self.force = False  # the watch is stopping: close what is open with what is there

    def _say(self, key: str, line: str, out: list[str]) -> None:
        if key not in self._said:
            self._said.add(key)
            out.append(line)

    def grace_s(self) -> float:
        return min(self.s.quiet_s, max(2 * self.s.settle_s, 2 * self.s.interval_s, 1.0))

    # -- listing --------------------------------------------------------------------------
    def _mdocs_by_series(self, scan: Scan, out: list[str]) -> dict[str, tuple[FileState, RawMdoc]]:
        """Each series' mdoc and its parsed text (the one with most tilts, newest, of duplicates)."""
        chosen: dict[str, list[tuple[FileState, RawMdoc]]] = {}
        for f in scan.mdocs.values():
            if f.raw is None:
                continue
            try:
                kind = check_tilt_series(f.raw)
            except MdocError as err:
                self._say(f"skip:{f.path}", f"skipped {f.path.name}: {str(err).split(': ', 1)[-1]}", out)
                continue
            if kind != "ZValue":
                self._say(
                    f"frameset:{f.path}",
                    f"skipped {f.path.name}: a per-movie [FrameSet] mdoc — the watch mode follows tilt-series mdocs",
                    out,
                )
                continue
            chosen.setdefault(ts_id_from_name(f.path.name), []).append((f, f.raw))
        result = {}
        for ts, files in chosen.items():
            files.sort(key=lambda fr: (len(fr[1].sections), fr[0].mtime), reverse=True)
            if len(files) > 1:
                first = files[0][0].path.name
                others = ", ".join(x.path.name for x, _ in files[1:])
                self._say(
                    f"dup:{ts}:{len(files)}",
                    f"{ts}: {len(files)} mdocs ({first}, {others}) — using {first} (most tilts, newest)",
                    out,
                )
            result[ts] = files[0]
        return result

    def _listed(self, f: FileState, raw: RawMdoc, out: list[str]) -> list[tuple[str, float, str]]:
        """(movie name, angle, section) of the mdoc's complete tilt sections."""
        rows = []
        for s in raw.sections:
            if s.kind != "ZValue":
                continue
            name = movie_basename(s.values.get("SubFramePath", "")) if s.values.get("SubFramePath") else None
            try:
                angle = float(s.values.get("TiltAngle", "").split()[0])
            except (ValueError, IndexError):
                angle = None
            if name is None or angle is None:
                if s is not raw.sections[-1]:  # the last one may be half-written
                    self._say(
                        f"sec:{f.path}:{s.label}",
                        f"{f.path.name} [{s.label}]: no "
                        f"{'SubFramePath' if name is None else 'TiltAngle'} — section skipped",
                        out,
                    )
                continue
            rows.append((name, angle, s.label))
        return rows

    @staticmethod
    def _find(name: str, names: dict[str, list[Path]]) -> Path | None:
        hits = names.get(name.lower(), [])
        if len(hits) == 1:
            return hits[0]
        m = _TOMO5_MOVIE.match(name)
        if m and not hits:  # Tomo5: the nominal angle in the name may differ
            pre, suf = m.group("prefix").lower(), m.group("suffix").lower()
            near = [p for k, ps in names.items() if k.startswith(pre) and k.endswith(suf) for p in ps]
            return near[0] if len(near) == 1 else None
        return hits[0] if hits else None

    # -- update ---------------------------------------------------------------------------
    def update(self, scan: Scan, now: float) -> list[str]:
        """Rebuild the series views from ``scan``; returns the new one-line events."""
        out: list[str] = []
        names = scan.by_name()
        claimed: set[Path] = set()
        views: dict[str, SeriesView] = {}
        for ts, (f, raw) in self._mdocs_by_series(scan, out).items():
            _, form = axis_from_titles(raw.titles)
            tomo5 = form == "tomo5" or any("Tomography" in t for t in raw.titles)
            v = views[ts] = SeriesView(ts, f.path, "tomo5" if tomo5 else "serialem", final_mdoc=tomo5)
            v.last_activity = f.changed
            for name, angle, label in self._listed(f, raw, out):
                path = self._find(name, names)
                if path in claimed:
                    self._say(f"twice:{path}", f"{path.name}: listed by two series — kept in the first", out)
                    continue
                if path is not None:
                    claimed.add(path)
                first = self.first_seen.setdefault((ts, name), min(now, f.changed))  # a restart keeps clocks
                v.tilts.append(Tilt(name, path, angle, label, first))
        for path in scan.movies:  # Tomo5 movies before their mdoc
            series_id = tomo5_series_of(path.name)
            m = _TOMO5_MOVIE.match(path.name)  # None exactly when series_id is
            if path in claimed or series_id is None or m is None:
                continue
            if series_id in views and views[series_id].mdoc is not None:
                continue
            v = views.setdefault(series_id, SeriesView(series_id, flavour="tomo5"))
            v.tilts.append(
                Tilt(
                    path.name,
                    path,
                    float(m.group("angle")),
                    None,
                    self.first_seen.setdefault((series_id, path.name), min(now, scan.movies[path].changed)),
                )
            )
            claimed.add(path)
        for v in views.values():
            self._tilt_states(v, scan, now, out)
        self._orphans(scan, claimed, now, out)
        for v in sorted(views.values(), key=lambda view: view.first_seen):
            self._close(v, views, now, out)
        self.series = views
        return out

    def _tilt_states(self, v: SeriesView, scan: Scan, now: float, out: list[str]) -> None:
        for t in v.tilts:
            f = scan.movies.get(t.path) if t.path else None
            t.state = "missing" if f is None else "complete" if f.status == "complete" else "growing"
            if f is not None:
                v.last_activity = max(v.last_activity, f.changed)
                if t.state == "complete":
                    v.last_tilt = max(v.last_tilt, f.changed)
            v.last_activity = max(v.last_activity, t.first_seen)
            late = now - t.first_seen >= self.s.movie_timeout_s
            if t.state != "complete" and t.section is not None and (late or self.force):
                t.state = "dropped"
                why = (
                    "never arrived"
                    if f is None
                    else f"does not decode ({f.error})"
                    if f.status == "bad"
                    else "still growing"
                    if now - f.changed < self.s.settle_s
                    else "not complete"
                )
                when = f"{now - t.first_seen:.0f} s after it was listed" if late else "when the watch stopped"
                t.note = why
                self._say(
                    f"drop:{v.ts_id}:{t.name}", f"{v.ts_id}: {t.name} {why} {when} — the series goes on without it", out
                )
            elif t.state == "complete" and f"drop:{v.ts_id}:{t.name}" in self._said:
                self._said.discard(f"drop:{v.ts_id}:{t.name}")
                out.append(f"{v.ts_id}: {t.name} is complete after all")
        firsts = [t.first_seen for t in v.tilts]
        v.first_seen = min(firsts) if firsts else v.last_activity

    def _orphans(self, scan: Scan, claimed: set[Path], now: float, out: list[str]) -> None:
        old = [p for p, f in scan.movies.items() if p not in claimed and now - f.first_seen >= self.s.movie_timeout_s]
        if old:
            self._say(
                f"orphans:{len(old)}",
                f"{len(old)} movie(s) not listed in any mdoc (e.g. {old[0].name}) — ignored until an mdoc lists them",
                out,
            )

    def session_count(self) -> int | None:
        counts = Counter(self.counts.values())
        return counts.most_common(1)[0][0] if counts else None

    def _close(self, v: SeriesView, views: dict[str, SeriesView], now: float, out: list[str]) -> None:
        v.expected = self.s.expected_tilts or (len(v.tilts) if v.final_mdoc else None)
        if not v.tilts or v.pending():
            return
        quiet = now - v.last_activity
        if v.mdoc is None:
            if quiet >= self.s.quiet_s:
                v.reason = "waiting for its mdoc"
                self._say(
                    f"nomdoc:{v.ts_id}",
                    f"{v.ts_id}: {len(v.tilts)} movies and no mdoc after {quiet:.0f} s — "
                    "waiting for it (Tomo5 writes it at the end of a series)",
                    out,
                )
            return
        later = [w for w in views.values() if w is not v and w.first_seen > v.last_activity]
        listed = len(v.tilts)
        tilts = tuple(sorted((t.name, t.state) for t in v.tilts))
        before = self.closed_once.get(v.ts_id)
        if before is not None and before[0] == tilts:
            why = before[1]
        elif before is not None and quiet >= self.grace_s():
            why = f"{listed} tilts, nothing new for {quiet:.0f} s"
        elif v.expected and listed >= v.expected:
            why = f"all {v.expected} tilts in"
        elif later and quiet >= self.grace_s():
            why = f"{later[0].ts_id} has started"
        elif quiet >= self.s.quiet_s:
            why = f"no new tilt for {quiet:.0f} s"
        elif self.force:
            why = f"the watch is stopping, nothing new for {quiet:.0f} s"
        else:
            return
        n_ref = v.expected or self.session_count() or max(len(w.tilts) for w in views.values())
        n_in = len(v.accepted())
        if n_in >= 2 and n_in >= self.s.min_fraction * n_ref:
            v.state = "closed"
            v.reason = why if n_in >= n_ref else f"{why}; {n_in} of {n_ref} tilts ({100 * n_in / n_ref:.0f}%)"
            self.closed_once.setdefault(v.ts_id, (tilts, why))
            if before is not None and before[0] != tilts:
                self.closed_once[v.ts_id] = (tilts, why)
            self.counts.setdefault(v.ts_id, listed)
        else:
            v.state = "aborted"
            v.reason = (
                f"{why}, only {n_in} of {n_ref} tilts ({100 * n_in / n_ref:.0f}%, < "
                f"{100 * self.s.min_fraction:.0f}%) — looks aborted; not processed (--min-fraction lowers the bar)"
            )
            self._say(f"aborted:{v.ts_id}:{n_in}", f"{v.ts_id}: {v.reason}", out)
