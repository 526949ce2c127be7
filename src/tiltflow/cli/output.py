"""Printing helpers for the CLI: short rich summaries, JSON, one-line errors."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=True, emoji=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def fail(lines: list[str], code: int = 2) -> NoReturn:
    """Print each line as ``error: ...`` (user text is never read as rich markup) and exit."""
    for line in lines:
        err_console.print(f"[bold red]error:[/] {escape(str(line))}", markup=True)
    sys.exit(code)


@contextmanager
def warnings_as_notes() -> Iterator[list[str]]:
    """Route Python warnings away from the terminal: each distinct message is collected once
    (the caller prints them as ``note:`` lines) and written to the log of any open run."""
    notes: list[str] = []

    def collect(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text in notes:
            return
        notes.append(text)
        for name, log in list(logging.Logger.manager.loggerDict.items()):
            if name.startswith("tiltflow.run.") and isinstance(log, logging.Logger) and log.handlers:
                log.warning("note: %s (%s)", text, category.__name__)

    with warnings.catch_warnings():
        warnings.showwarning = collect
        yield notes


def print_notes(notes: list[str]) -> None:
    for note in notes:
        err_console.print(f"note: {note}", markup=False)


def to_jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n")


def print_run(
    store: Any, run: Any, *, elapsed: float | None = None, warnings: Sequence[str] = (), notes: Sequence[str] = ()
) -> None:
    took = f" in {elapsed:.1f} s" if elapsed is not None else ""
    console.print(f"run {run.id} [bold]{run.step}[/] {run.status}{took}", markup=True)
    for out in store.outputs(run.id):
        console.print(f"  {out.pointer}: {out.summary}", markup=False)
    for n in notes:  # a note may be a multi-line table: indent every line
        for line in str(n).splitlines():
            console.print(f"  {line}", markup=False)
    for w in warnings:
        console.print(f"  [yellow]warning:[/] {escape(str(w))}", markup=True)


class ProgressPrinter:
    """Live per-item progress with an ETA: one updating line on a terminal, a line per ~10% otherwise.
    A step's later phase (a new ``total``, or ``done`` counting again from 0, e.g. the CTF series
    pass after the movies) restarts the clock, so its ETA is its own."""

    def __init__(self, label: str = ""):
        import time

        self.label = label
        self._clock = time.monotonic
        self._start: float | None = None
        self._last_pct = -1
        self._last: tuple[int, int] = (0, 0)

    def __call__(self, item: str, done: int, total: int) -> None:
        now = self._clock()
        if self._start is None or total != self._last[1] or done < self._last[0]:
            self._start, self._last_pct = now, -1  # a new phase
        self._last = (done, total)
        elapsed = now - self._start
        eta = f"ETA {elapsed / done * (total - done):.0f} s" if done else "ETA ?"
        name = item.rsplit("/", 1)[-1]
        text = f"  {self.label} {done}/{total} ({name}), elapsed {elapsed:.0f} s, {eta}"
        if console.is_terminal:
            console.print(text.ljust(100), end="\r", markup=False, highlight=False)
            if done == total:
                console.print(" " * 100, end="\r")
        else:
            pct = int(100 * done / max(total, 1)) // 10
            if pct != self._last_pct:
                self._last_pct = pct
                console.print(text, markup=False)

    def reset(self, label: str) -> None:
        self.label, self._start, self._last_pct, self._last = label, None, -1, (0, 0)
