"""Printing helpers for the CLI: short rich summaries, JSON, one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from typing import Any, NoReturn

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(lines: list[str], code: int = 2) -> NoReturn:
    for line in lines:
        err_console.print(f"[bold red]error:[/] {line}", markup=True)
    sys.exit(code)


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


def print_run(store: Any, run: Any, *, elapsed: float | None = None, warnings: list[str] = (),
              notes: list[str] = ()) -> None:
    took = f" in {elapsed:.1f} s" if elapsed is not None else ""
    console.print(f"run {run.id} [bold]{run.step}[/] {run.status}{took}", markup=True)
    for out in store.outputs(run.id):
        console.print(f"  {out.pointer}: {out.summary}", markup=False)
    for n in notes:                       # a note may be a multi-line table: indent every line
        for line in str(n).splitlines():
            console.print(f"  {line}", markup=False)
    for w in warnings:
        console.print(f"  [yellow]warning:[/] {w}", markup=True)


class ProgressPrinter:
    """Live per-item progress with an ETA: one updating line on a terminal, a line per ~10% otherwise."""

    def __init__(self, label: str = ""):
        import time

        self.label = label
        self._clock = time.monotonic
        self._start: float | None = None
        self._last_pct = -1

    def __call__(self, item: str, done: int, total: int) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        name = item.rsplit("/", 1)[-1]
        text = f"  {self.label} {done}/{total} ({name}), elapsed {elapsed:.0f} s, ETA {eta:.0f} s"
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
        self.label, self._start, self._last_pct = label, None, -1
