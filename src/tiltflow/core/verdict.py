"""A result's verdict: whether it is supported by the data.

``good`` / ``check`` / ``failed`` with the
reasons, shared by every method that judges its own result (alignment, the CTF series pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Status", "Verdict"]

Status = Literal["good", "check", "failed"]


@dataclass(frozen=True)
class Verdict:
    """One series' verdict; ``reasons`` say why it is not ``good`` (or notes that it is)."""

    status: Status
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def line(self) -> str:
        """``good``, ``check: reason; reason`` or ``failed: reason``."""
        return self.status + (": " + "; ".join(self.reasons) if self.reasons else "")

    def to_dict(self) -> dict:
        """``{"status": ..., "reasons": [...]}`` for JSON."""
        return {"status": self.status, "reasons": list(self.reasons)}
