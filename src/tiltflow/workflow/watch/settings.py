"""The watch mode's settings (``tiltflow watch`` options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WatchSettings:
    interval_s: float = 10.0  # polling interval
    settle_s: float = 10.0  # a movie's size stable this long (then it must decode)
    movie_timeout_s: float = 300.0  # a listed movie not complete this long is left out (reported)
    quiet_s: float = 180.0  # no new tilt this long closes a series
    min_fraction: float = 0.8  # of the expected tilts, to process a series closed by quiet time
    expected_tilts: int | None = None  # tilts per series when known (else: Tomo5 mdoc, then the session)
    stop_after_idle_s: float | None = None  # stop when nothing new arrived this long and all is done
    tilt_workers: int = 1  # per-tilt tasks in flight at once
    preview_every_s: float | None = 20.0  # coarse reconstruction of a series being collected (None: off)

    def problems(self) -> list[str]:
        out = []
        for name in ("interval_s", "settle_s", "movie_timeout_s", "quiet_s"):
            value = getattr(self, name)
            if not value >= 0:
                out.append(f"--{name[:-2].replace('_', '-')} {value}: must be >= 0 seconds")
        if not 0 <= self.min_fraction <= 1:
            out.append(f"--min-fraction {self.min_fraction}: must be between 0 and 1")
        if self.expected_tilts is not None and self.expected_tilts < 2:
            out.append(f"--tilts {self.expected_tilts}: a tilt series has 2 or more tilts")
        if self.stop_after_idle_s is not None and not self.stop_after_idle_s >= 0:
            out.append(f"--stop-after-idle {self.stop_after_idle_s}: must be >= 0 seconds")
        if self.tilt_workers < 1:
            out.append(f"--workers {self.tilt_workers}: must be 1 or more")
        return out
