"""Scipion's streaming imports as tiltflow's watch mode (issue 14 item 10).

Scipion processes a session on the fly with an import whose ``dataStreaming`` is on (pwem's
``ProtImportMovies`` in the 2026 templates, feeding MotionCor and ``ProtComposeTS``; older
``ProtImportTsMovies``), and every protocol downstream follows the growing sets. tiltflow does the
same with ``tiltflow watch``: ``workflow run FILE`` of such a workflow follows its folder (``--watch
DIR``, or the template's own files path) with the template's settings translated — read from each
protocol's ``_defineParams`` (pwem ``ProtImportFiles``, scipion-em-tomo ``ProtComposeTS``):

| Scipion | meaning there | tiltflow watch |
| --- | --- | --- |
| import ``fileTimeout`` (default "30") | a file unchanged this long is a new file | ``--settle`` |
| import ``timeout`` (default "12h") | no new file this long: the import ends, its set closes | ``--stop-after-idle`` |
| ComposeTS ``time4NextTilt`` (default "3m") | no new tilt in the mdoc this long: series complete | ``--quiet`` |
| ComposeTS ``percentTiltsRequired`` (enum 50..100 %, default 80) | tilts to compose a series | ``--min-fraction`` |
| older ComposeTS / import ``time4NextTS`` | no new series this long: it ends | ``--stop-after-idle`` (no ``timeout``) |

Durations are Scipion's: seconds as a number, or ``1d 2h 20m 15s``. ``--movie-timeout`` has no
Scipion counterpart (Scipion waits for a movie forever) and keeps tiltflow's default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tiltflow.workflow.watch.settings import WatchSettings

# WatchSettings field -> the `tiltflow watch` option
OPTION = {
    "interval_s": "--interval",
    "settle_s": "--settle",
    "movie_timeout_s": "--movie-timeout",
    "quiet_s": "--quiet",
    "min_fraction": "--min-fraction",
    "expected_tilts": "--tilts",
    "stop_after_idle_s": "--stop-after-idle",
}
_PERCENTS = (50, 60, 70, 80, 90, 100)  # ComposeTS's percentTiltsRequired choices (an EnumParam)
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([dhms]?)\s*)+$", re.IGNORECASE)
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms]?)", re.IGNORECASE)
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds of a Scipion duration (``30``, ``"180"``, ``"3m"``, ``"1d 2h 20m 15s"``); None when
    it is empty or not a duration."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    text = str(value).strip()
    if not text or not _DURATION.match(text):
        return None
    return sum(float(n) * _UNIT_S[unit.lower()] for n, unit in _PART.findall(text))


def _on(value: Any) -> bool:
    return value is True or value == 1 or str(value).strip().lower() in ("true", "yes", "1")


def format_options(settings: dict[str, Any]) -> str:
    return " ".join(f"{OPTION[k]} {v:g}" for k, v in settings.items() if k in OPTION and v is not None)


@dataclass
class StreamingImport:
    """A Scipion workflow whose import runs in streaming: the watch settings it translates to."""

    import_id: str  # the workflow step (= Scipion id) of the import
    protocol: str
    settings: dict[str, float] = field(default_factory=dict)  # WatchSettings field -> value
    sources: dict[str, str] = field(default_factory=dict)  # WatchSettings field -> "fileTimeout 30"
    notes: list[str] = field(default_factory=list)
    queue: bool = False  # Scipion sent the protocols to a queue

    def translated(self) -> str:
        """``fileTimeout 30 -> --settle 30, ...``"""
        return ", ".join(f"{self.sources[k]} -> {OPTION[k]} {v:g}" for k, v in self.settings.items())

    def summary(self) -> str:
        """One line for the plan's head."""
        queue = (
            ("; Scipion sent its protocols to a queue: add --jobqueue CONFIG (dask-jobqueue, SLURM) to do the same")
            if self.queue
            else ""
        )
        return (
            f"streaming: {self.protocol} (id {self.import_id}) imports in streaming — `workflow run` follows "
            f"its folder as `tiltflow watch` does ({format_options(self.settings) or 'default settings'}; "
            f"--watch DIR names the folder, --no-watch runs once on the files there){queue}"
        )


def _time(proto: dict, key: str, target: str, out: StreamingImport, what: str) -> None:
    raw = proto.get(key)
    if raw is None or raw == "":
        return
    seconds = parse_duration(raw)
    if seconds is None:
        out.notes.append(
            f"{what} {key} {raw!r}: not a duration (a number of seconds or '1d 2h 20m 15s') — "
            f"{OPTION[target]} keeps {getattr(WatchSettings(), target)}"
        )
        return
    out.settings[target] = seconds
    out.sources[target] = f"{what} {key} {raw}"


def _percent(compose: dict, out: StreamingImport) -> None:
    raw = compose.get("percentTiltsRequired")
    if raw is None or raw == "":
        return
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if value.is_integer() and 0 <= value < len(_PERCENTS):  # the EnumParam's index (2025-2026)
        percent = float(_PERCENTS[int(value)])
    elif 50 <= value <= 100:  # a plain percentage (other versions)
        percent = value
    else:
        out.notes.append(
            f"ComposeTS percentTiltsRequired {raw!r}: neither a choice index nor 50-100 % — "
            f"--min-fraction keeps {WatchSettings().min_fraction:g}"
        )
        return
    out.settings["min_fraction"] = round(percent / 100, 4)
    out.sources["min_fraction"] = f"ComposeTS percentTiltsRequired {raw} ({percent:g} %)"


def streaming_import(protocols: list[dict[str, Any]], plan: list, steps: list) -> StreamingImport | None:
    """The watch settings of a workflow whose import-movies step comes from a streaming import (None
    when it has none); says so in the plan entries of the import and of its ComposeTS."""
    from tiltflow.workflow.scipion import _with_compose

    ids = {str(p.get("object.id")) for p in protocols}
    copies, _ = _with_compose(protocols, ids)
    by_id = {str(p.get("object.id")): p for p in copies}
    entries = {e.id: e for e in plan}
    kinds = {s.id: s.step for s in steps}
    found: StreamingImport | None = None
    for pid, proto in by_id.items():
        if not _on(proto.get("dataStreaming")) or pid not in kinds:
            continue
        cls = str(proto.get("object.className"))
        if kinds[pid] != "import-movies":
            if pid in entries:
                entries[pid].reason += (
                    f"; streaming import ({cls}): tiltflow's watch mode follows movies and their "
                    "mdocs — this import runs once on the files there"
                )
            continue
        if found is not None:
            if pid in entries:
                entries[pid].reason += f"; streaming import: the watch follows step {found.import_id}'s folder only"
            continue
        out = StreamingImport(pid, cls, queue=any(_on(p.get("_useQueue")) for p in protocols))
        _time(proto, "fileTimeout", "settle_s", out, "import")
        _time(proto, "timeout", "stop_after_idle_s", out, "import")
        compose = proto.get("_compose")
        if compose is not None:
            _time(compose, "time4NextTilt", "quiet_s", out, "ComposeTS")
            _percent(compose, out)
            if "stop_after_idle_s" not in out.settings:
                _time(compose, "time4NextTS", "stop_after_idle_s", out, "ComposeTS")
        else:
            _time(proto, "time4NextTilt", "quiet_s", out, "import")
            if "stop_after_idle_s" not in out.settings:
                _time(proto, "time4NextTS", "stop_after_idle_s", out, "import")
        settle = out.settings.get("settle_s", WatchSettings().settle_s)
        if settle >= WatchSettings().movie_timeout_s:  # a movie must be able to settle before it times out
            out.settings["movie_timeout_s"] = 2 * settle
            out.sources["movie_timeout_s"] = f"twice the file timeout ({settle:g} s)"
        found = out
        if pid in entries:
            entries[pid].reason += (
                "; streaming (dataStreaming): `workflow run` follows the folder as `tiltflow watch` "
                f"does — {out.translated() or 'default watch settings'}" + "".join(f"; {n}" for n in out.notes)
            )
        if compose is not None:
            cid = str(compose.get("object.id"))
            if cid in entries:
                mine = [
                    f"{out.sources[k]} -> {OPTION[k]} {out.settings[k]:g}"
                    for k in ("quiet_s", "min_fraction")
                    if k in out.sources and out.sources[k].startswith("ComposeTS")
                ]
                entries[cid].reason += "; in streaming: a series is complete as in `tiltflow watch`" + (
                    f" ({', '.join(mine)})" if mine else ""
                )
    return found
