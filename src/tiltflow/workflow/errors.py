"""Errors the workflow layer turns into one-line messages for users."""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: one line per problem, each naming the file (and line/key) and the fix.

    Raised before anything is registered; the runner removes the run so the project is unchanged.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ProjectError(Exception):
    """A project that cannot be opened, or a pointer to a run/output that does not exist."""


class DiskFull(ProjectError):
    """The disk under the project (or an output folder) is full: one line, ``disk full at PATH (N MB free)``
    and what to do. A :class:`ProjectError`, so every command prints it as its one-line error.
    ``workflow.diskspace`` recognises the many forms a full disk takes (ENOSPC, SQLite's
    'database or disk is full' and its 'disk I/O error' on a full disk)."""

    def __init__(self, path, free_mb: float, hint: str = ""):
        self.path, self.free_mb, self.hint = str(path), float(free_mb), hint
        shown = f"{free_mb:.1f}" if free_mb < 10 else f"{free_mb:.0f}"
        super().__init__(f"disk full at {self.path} ({shown} MB free)" + (f" — {hint}" if hint else ""))
