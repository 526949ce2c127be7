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
