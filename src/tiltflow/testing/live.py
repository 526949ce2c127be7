"""A simulated session written at the pace of a microscope (``tiltflow demo-data --live``).

Same truth and pixels as :func:`tiltflow.testing.demo.write_demo_dataset`, but written in
acquisition order: the gain first, then per tilt its movie in ``pieces`` chunks (a camera or a
network copy writing), one tilt every ``interval_s`` seconds. SerialEM mdocs grow by one section
per tilt (after the movie's first chunk, as SerialEM may list a movie still being written); Tomo5
mdocs appear whole at the end of their series. ``truth.json`` is written last.

``replay_session`` writes a finished demo folder the same way (benchmarks: nothing simulated while
the watch works). Bad acquisitions for tests of the watch mode (``LiveScenario``): movies left truncated, series
aborted after a few tilts, tilts whose movie arrives only after the whole session (late).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import tifffile

from tiltflow.testing.acquisition import CONVENTIONS
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import (
    GAIN_FILE,
    TRUTH_FILE,
    _clear_previous,
    _config_dict,
    make_detector,
    series_rng,
    simulate_series,
)
from tiltflow.testing.mdoc_writer import format_mdoc


@dataclass
class LiveScenario:
    """How the session is written. Series and tilts are 0-based (tilts in acquisition order)."""

    interval_s: float = 5.0  # from one tilt's start to the next
    pieces: int = 4  # chunks per movie, spread over half an interval
    flavours: list[str] | None = None  # per series; default: the config's flavour for all
    truncated: set[tuple[int, int]] = field(default_factory=set)  # movies never finished
    aborted: dict[int, int] = field(default_factory=dict)  # series -> tilts acquired
    late: set[tuple[int, int]] = field(default_factory=set)  # movies written after the session
    late_delay_s: float | None = 0.0  # wait this long after the session before the late ones
    # (None: they are not written at all; a test copies them in from a batch demo of the same config)
    series_gap_s: float | None = None  # pause between series (default: one interval)


Event = Callable[[str, dict], None]


def _tiff_bytes(movie) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, movie, compression="lzw", photometric="minisblack")
    return buf.getvalue()


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()


def _write_pieces(
    path: Path,
    data: bytes,
    pieces: int,
    pause_s: float,
    *,
    stop_after: int | None = None,
    after_first: Callable[[], None] | None = None,
) -> None:
    """Write ``data`` in ``pieces`` chunks (only ``stop_after`` of them when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    step = -(-len(data) // pieces)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    for j, chunk in enumerate(chunks[:stop_after]):
        if j:
            time.sleep(pause_s)
        _append(path, chunk)
        if j == 0 and after_first is not None:
            after_first()


class _Pacer:
    """Start tilt k at ``t0 + k * interval`` (or as soon as rendering allows)."""

    def __init__(self, interval_s: float):
        self.interval, self.next = interval_s, time.monotonic()

    def wait(self, extra_s: float = 0.0) -> None:
        self.next += extra_s
        delay = self.next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next = max(self.next, time.monotonic()) + self.interval


def write_live_session(
    out_dir: Path | str,
    config: DemoConfig,
    scenario: LiveScenario | None = None,
    *,
    force: bool = False,
    on_event: Event | None = None,
) -> dict:
    """Simulate and write the session as it would be acquired (module docstring); returns the truth.

    ``on_event(kind, info)`` hears ``movie-start``, ``movie-done``, ``mdoc`` and ``series-done``."""
    sc = scenario or LiveScenario()
    flavours = sc.flavours or [config.flavour] * config.n_series
    if len(flavours) != config.n_series:
        raise ValueError(f"{len(flavours)} flavours for {config.n_series} series")
    out_dir = _start(out_dir, sc, force)
    camera = make_detector(config)
    tifffile.imwrite(out_dir / GAIN_FILE, camera["gain"], photometric="minisblack")
    nx, ny = config.size
    truth = {
        "format": "tiltflow-demo-truth",
        "version": 1,
        "config": _config_dict(config),
        "conventions": CONVENTIONS,
        "live": {"interval_s": sc.interval_s, "pieces": sc.pieces},
        "detector": {
            "gain_file": GAIN_FILE,
            "image_size": [nx, ny],
            "hot_pixels": camera["hot_pixels"],
            "gain_convention": CONVENTIONS["gain"],
        },
        "series": [],
    }

    def sessions():
        for index in range(config.n_series):
            cfg = replace(config, flavour=flavours[index])
            movies, series = simulate_series(cfg, index, series_rng(cfg, index))
            yield series, (_tiff_bytes(m) for m in movies)

    truth["series"] = _play(out_dir, sessions(), sc, on_event or (lambda kind, info: None))
    return _finish(out_dir, truth)


def replay_session(
    source: Path | str,
    out_dir: Path | str,
    scenario: LiveScenario | None = None,
    *,
    force: bool = False,
    on_event: Event | None = None,
) -> dict:
    """Write a finished demo folder ``source`` (``write_demo_dataset``) into ``out_dir`` at the pace of
    ``scenario``, in acquisition order, without simulating anything (benchmarks: only the watch works)."""
    sc = scenario or LiveScenario()
    source = Path(source)
    truth = json.loads((source / TRUTH_FILE).read_text())
    out_dir = _start(out_dir, sc, force)
    (out_dir / GAIN_FILE).write_bytes((source / GAIN_FILE).read_bytes())
    truth["live"] = {"interval_s": sc.interval_s, "pieces": sc.pieces, "replayed_from": str(source)}
    sessions = (
        (dict(series), ((source / t["movie"]).read_bytes() for t in series["tilts"])) for series in truth["series"]
    )
    truth["series"] = _play(out_dir, sessions, sc, on_event or (lambda kind, info: None))
    return _finish(out_dir, truth)


def _start(out_dir: Path | str, sc: LiveScenario, force: bool) -> Path:
    if sc.pieces < 1 or sc.interval_s < 0:
        raise ValueError(f"pieces must be >= 1 and interval >= 0, got {sc.pieces} and {sc.interval_s}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(out_dir, force)
    (out_dir / "frames").mkdir()
    return out_dir


def _finish(out_dir: Path, truth: dict) -> dict:
    text = json.dumps(truth, indent=1)
    tmp = out_dir / (TRUTH_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out_dir / TRUTH_FILE)
    return json.loads(text)


def _play(out_dir: Path, sessions, sc: LiveScenario, emit: Event) -> list[dict]:
    """Write each ``(series truth, movie bytes in acquisition order)`` at the scenario's pace."""
    pacer, held, done = _Pacer(sc.interval_s), [], []
    gap = sc.interval_s if sc.series_gap_s is None else sc.series_gap_s
    pause = sc.interval_s * 0.5 / max(sc.pieces - 1, 1)
    for index, (series, movies) in enumerate(sessions):
        tomo5 = series["flavour"] == "tomo5"
        n = min(sc.aborted.get(index, len(series["tilts"])), len(series["tilts"]))
        mdoc = out_dir / series["mdoc"]
        written = ""
        for k, (tilt, data) in enumerate(zip(series["tilts"][:n], movies, strict=False)):
            pacer.wait(gap if k == 0 and index else 0.0)
            path = out_dir / tilt["movie"]

            def add_section(k=k, series=series, mdoc=mdoc, tomo5=tomo5) -> None:
                nonlocal written
                if not tomo5:
                    text = format_mdoc({**series, "tilts": series["tilts"][: k + 1]}).replace("\n", "\r\n")
                    _append(mdoc, text[len(written) :].encode())
                    written = text
                    emit("mdoc", {"series": series["tsId"], "sections": k + 1})

            if (index, k) in sc.late:
                held.append((path, data))
                add_section()
                continue
            emit("movie-start", {"series": series["tsId"], "tilt": k, "movie": str(path)})
            cut = max(1, sc.pieces // 2) if (index, k) in sc.truncated else None
            if cut is not None and sc.pieces == 1:
                data = data[: len(data) // 2]
            _write_pieces(path, data, sc.pieces, pause, stop_after=cut, after_first=add_section)
            emit("movie-done", {"series": series["tsId"], "tilt": k, "movie": str(path), "truncated": cut is not None})
        if tomo5:
            mdoc.write_bytes(format_mdoc({**series, "tilts": series["tilts"][:n]}).replace("\n", "\r\n").encode())
            emit("mdoc", {"series": series["tsId"], "sections": n})
        series["live"] = {
            "acquired_tilts": n,
            "truncated": sorted(k for s, k in sc.truncated if s == index and k < n),
            "late": sorted(k for s, k in sc.late if s == index and k < n),
        }
        done.append(series)
        emit("series-done", {"series": series["tsId"], "tilts": n})
    if held and sc.late_delay_s is not None:
        time.sleep(sc.late_delay_s)
        for path, data in held:
            emit("movie-start", {"movie": str(path), "late": True})
            _write_pieces(path, data, sc.pieces, pause)
            emit("movie-done", {"movie": str(path), "late": True})
    return done
