"""Write docs/reliability.md — the inputs tried, faults injected and their outcomes (issue 13) — from
the last test run.

``make test`` (any pytest run that includes ``tests/badinput``) leaves every catalogue test's outcome in
a JSON file (``tests/badinput/conftest.py``: ``$TILTFLOW_RELIABILITY_JSON``, by default
``<temp dir>/tiltflow-reliability/last-run.json``; later runs of some tests update theirs). This
script counts them: tracebacks, changed projects on rejected input, failed resumes, kills, and
lists every row of the issue's table with the tests that cover it.

Run: .venv/bin/python docs/make_reliability.py [--json FILE] [--out docs/reliability.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = Path(
    os.environ.get("TILTFLOW_RELIABILITY_JSON", Path(tempfile.gettempdir()) / "tiltflow-reliability" / "last-run.json")
)

# issue 13's table: row -> (what was tried, tests that cover it: substrings of test ids)
ROWS = {
    1: (
        "SIGKILL of `motion-ctf` after all movies are recorded",
        ["test_motion_ctf_resume.py", "test_sigkill_steps.py::test_sigkill_at_random_points_of_a_step[motion-ctf]"],
    ),
    2: ("a path or file name containing `[/]` or `[bold]`", ["test_paths_with_markup_are_printed_verbatim"]),
    3: ("two viewers (and the CLI) press Save at the same moment", ["test_concurrency_save.py"]),
    4: (
        "an all-zero (or NaN) gain",
        [
            "test_a_bad_gain_or_dark_reference_is_refused_at_import[zero.gain]",
            "test_a_bad_gain_or_dark_reference_is_refused_at_import[nan.gain]",
        ],
    ),
    5: ("`--bfactor nan` and other non-finite options", ["nan", "inf"]),
    6: ("`--dark` naming a missing file", ["missing_dark.mrc"]),
    7: (
        "implausible mdoc values (`PixelSpacing = 1e300`, `Voltage = -300`, ...)",
        ["test_an_implausible_mdoc_value_is_refused_with_file_line_and_key"],
    ),
    8: (
        "reversed/negative ranges, oversized windows, grids, binning",
        ["test_a_bad_option_is_one_line_before_any_run", "test_motion_ctf_options_against_the_movies"],
    ),
    9: ("`subset --input` of a tomogram set", ["test_subset_of_tomograms_is_refused"]),
    10: ("`export --out` into an unwritable or missing place", ["test_export_out"]),
    11: ("`view --port 70000` / a port in use", ["test_view_port_out_of_range_and_in_use"]),
    12: ("disk full during a step; readers while the disk is full", ["test_disk_full.py"]),
    13: ("project folder moved or copied", ["test_relocatable.py"]),
    14: ("NaN / inf / \\|angle\\| > 90 in a `.rawtlt`", ["test_a_bad_angle_file_or_stack_header_is_refused"]),
    15: (
        "`subset --exclude-beyond -5` or `nan`; excluding every series or view",
        ["test_an_empty_or_meaningless_subset_is_refused", "test_a_subset_keeping_one_view_per_series_is_accepted"],
    ),
    16: (
        "TIFF written one page per frame series",
        ["test_a_tiff_written_one_page_per_series_reads_every_frame", "test_a_tiff_with_pages_of_different_sizes"],
    ),
    17: ("a corrupt or truncated MRC stack", ["test_mrc_corrupt.py"]),
    18: ("a symlink inside the project pointing outside it", ["test_symlinks_out_of_the_project_are_not_followed"]),
    19: ("a 16 MB JSON body; a foreign Host header", ["test_large_bodies_get_413", "test_host_"]),
    20: (
        "workflow file `[1,2,3]`, version 99, duplicate ids; `show abc`; missing SubFramePath; `--workers 0`; "
        "a constant-valued movie; duplicate `[ZValue]`; rejected first import; rejected `--restack`",
        [
            "test_a_workflow_file_that_is_not",
            "test_show_non_numeric",
            "test_a_missing_subframepath",
            "test_workers_below_one",
            "test_a_constant_valued_movie",
            "test_duplicate_zvalue_labels",
            "test_rejected_first_import_leaves_no_folder",
            "test_a_rejected_restack_leaves_no_stack",
        ],
    ),
}

# groups of the catalogue: test file -> (kind, what it does)
GROUPS = [
    ("tests/badinput/test_options.py", "input", "bad options: exit 2, one line, before any run, project unchanged"),
    ("tests/badinput/test_readers.py", "input", "bad files at import (mdoc values, gain/dark, angles, TIFF)"),
    ("tests/badinput/test_catalogue_more.py", "input", "subsets, workflow files, damaged mdocs and movies"),
    ("tests/badinput_cli/", "input", "CLI messages: markup, ports, exports, workers, first import"),
    ("tests/test_import_bad_input.py", "input", "import-movies: missing/truncated/odd movies, mdocs"),
    ("tests/test_mrc_corrupt.py", "input", "corrupt and truncated MRC stacks"),
    ("tests/test_subset_cli.py", "input", "subset: accepted and refused curation"),
    ("tests/badinput/test_fuzz_readers.py", "fuzz", "any bytes / mutated files into every text reader"),
    ("tests/badinput/test_sigkill_steps.py", "fault", "SIGKILL at random points of every step and of workflow run"),
    ("tests/test_motion_ctf_resume.py", "fault", "SIGKILL while motion-ctf assembles its stacks"),
    ("tests/test_workflow_scale.py", "fault", "SIGKILL of a workflow during motion-ctf, Dask cluster"),
    ("tests/test_workflow_continue.py", "fault", "workflow --continue after changes and kills"),
    ("tests/badinput/test_disk_full.py", "fault", "disk full (tmpfs, and emulated)"),
    ("tests/test_concurrency_save.py", "fault", "concurrent saves and reads"),
    ("tests/test_relocatable.py", "fault", "moved and copied projects"),
    ("tests/test_viewer_limits.py", "fault", "viewer: symlinks, body size, Host header"),
]

OUTCOMES = ("passed", "failed", "error", "xfailed", "xpassed", "skipped")


def _group(nodeid: str) -> str | None:
    for path, _, _ in GROUPS:
        if nodeid.startswith(path):
            return path
    return None


def _cases(tests: dict, needles: list[str]) -> dict[str, dict]:
    return {k: v for k, v in tests.items() if any(n in k for n in needles)}


def _counts(results: dict[str, dict]) -> str:
    c = Counter(v["outcome"] for v in results.values())
    return ", ".join(f"{c[o]} {o}" for o in OUTCOMES if c[o]) or "no test in the last run"


def traceback_failures(tests: dict) -> list[str]:
    """Failed tests whose failure is a traceback or an 'unexpected' error where one line was due."""
    pattern = re.compile(r"'Traceback' not in|error: unexpected |Logging error")
    return [k for k, v in tests.items() if v["outcome"] in ("failed", "error") and pattern.search(v["message"])]


def changed_projects(tests: dict) -> list[str]:
    return [
        k
        for k, v in tests.items()
        if v["outcome"] in ("failed", "error")
        and ("changed the project" in v["message"] or "project_state" in v["message"])
    ]


def failed_resumes(tests: dict) -> list[str]:
    faults = [
        g
        for g, kind, _ in GROUPS
        if kind == "fault" and ("kill" in g or "resume" in g or "continue" in g or "scale" in g or "disk" in g)
    ]
    return [k for k, v in tests.items() if v["outcome"] in ("failed", "error") and k.startswith(tuple(faults))]


def render(data: dict, commit: str) -> str:
    tests: dict[str, dict] = data["tests"]
    kills = sum(int(v["properties"].get("kills", 0)) for v in tests.values() if v["outcome"] == "passed")
    kill_tests = {k: v for k, v in tests.items() if "kills" in v["properties"]}
    fuzz = {k: v for k, v in tests.items() if k.startswith("tests/badinput/test_fuzz_readers.py") and "seeds" not in k}
    tb, changed, resumes = traceback_failures(tests), changed_projects(tests), failed_resumes(tests)
    whens = sorted(v["when"] for v in tests.values())
    out = [
        "# Reliability: inputs tried, faults injected, outcomes",
        "",
        "Issue 13's catalogue as tests. Generated by `docs/make_reliability.py` from the last test run — do not edit;",
        "run `make test` (or pytest on `tests/badinput` and the files below), then the script.",
        "",
        f"Test results of {whens[0]} to {whens[-1]}; code {commit}.",
        "",
        "| count | |",
        "| --- | ---: |",
        f"| catalogue tests | {len(tests)} ({_counts(tests)}) |",
        f"| tracebacks (a traceback or 'unexpected' error where one line was due) | {len(tb)} |",
        f"| changed projects on rejected input | {len(changed)} |",
        f"| failed resumes (kill, disk full, continue) | {len(resumes)} |",
        f"| SIGKILLs survived (integrity ok, nothing half-registered, continue equal) | {kills} in {len(kill_tests)} "
        f"steps/commands |",
        f"| fuzzed readers (any bytes, mutated valid files) | {len(fuzz)} properties ({_counts(fuzz)}) |",
        "",
        "## Issue 13's table, row by row",
        "",
        "| # | input or fault | tests | outcome |",
        "| --- | --- | ---: | --- |",
    ]
    for row, (what, needles) in ROWS.items():
        cases = _cases(tests, needles)
        out.append(f"| {row} | {what} | {len(cases)} | {_counts(cases)} |")
    out += ["", "## By group", "", "| file | kind | what | tests | outcome |", "| --- | --- | --- | ---: | --- |"]
    by_group: dict[str, dict] = defaultdict(dict)
    for k, v in tests.items():
        by_group[_group(k) or "other"][k] = v
    for path, kind, what in GROUPS:
        out.append(f"| `{path}` | {kind} | {what} | {len(by_group[path])} | {_counts(by_group[path])} |")
    if kill_tests:
        out += [
            "",
            "## SIGKILLs per step",
            "",
            "| step | kills | runs finished and compared with an uninterrupted one | outcome |",
            "| --- | ---: | ---: | --- |",
        ]
        for k, v in sorted(kill_tests.items()):
            name = k.split("[", 1)[1].rstrip("]") if "[" in k else "workflow run"
            out.append(
                f"| {name} | {v['properties'].get('kills')} | {v['properties'].get('continued_to_the_end')} | "
                f"{v['outcome']} |"
            )
    known = {k: v for k, v in tests.items() if v["outcome"] in ("xfailed", "skipped")}
    if known:
        out += ["", "## Known open or not run here", ""]
        for k, v in sorted(known.items()):
            out.append(f"- `{k}` ({v['outcome']}): {' '.join(v['message'].split())[:300]}")
    bad = {k: v for k, v in tests.items() if v["outcome"] in ("failed", "error", "xpassed")}
    if bad:
        out += ["", "## Failing", ""]
        for k, v in sorted(bad.items()):
            last = [line for line in v["message"].splitlines() if line.startswith("E ")][:3]
            out.append(f"- `{k}` ({v['outcome']}): {' / '.join(x[1:].strip() for x in last)[:300]}")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="the results file the tests wrote")
    ap.add_argument("--out", type=Path, default=HERE / "reliability.md")
    args = ap.parse_args()
    if not args.json.is_file():
        raise SystemExit(f"{args.json}: no test results — run `make test` (or pytest tests/badinput) first")
    data = json.loads(args.json.read_text())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        commit = f"commit {commit}" + (" with local changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "(commit unknown)"
    args.out.write_text(render(data, commit))
    print(f"wrote {args.out} ({len(data['tests'])} tests)")


if __name__ == "__main__":
    main()
