"""Property-based fuzzing of the text readers (issue 13 item 1): any byte string, and any mutation
of a valid file, either parses or raises the reader's one-line input error naming the file —
never another exception type, never a multi-line message.

Readers: mdoc (``io/mdoc``), motion STAR (``io/star``) and RELION STAR (``io/relion``), ``.rawtlt``
/ ``.tlt`` / ``.xf`` (``io/imod``), AreTomo ``.aln`` (``io/aretomo``) and workflow files
(``workflow/workflow_file``: tiltflow and Scipion JSON). Examples are drawn the same way on every
run (``tests/conftest.py``: derandomized profile); each property takes a few seconds."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tiltflow.io.aretomo import AlnFormatError, read_aln
from tiltflow.io.imod import ImodFormatError, read_tlt, read_xf, write_xf
from tiltflow.io.mdoc import MdocError, read_mdocs, read_tilt_series_mdoc
from tiltflow.io.relion import RelionFormatError, read_tilt_series_star
from tiltflow.io.star import StarFormatError, read_motion_star, write_motion_star
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.workflow_file import load_workflow, validate

FUZZ = settings(
    max_examples=int(os.environ.get("TILTFLOW_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
WORK = Path(tempfile.mkdtemp(prefix="tiltflow-fuzz-"))
REPO = Path(__file__).resolve().parents[2]


def corpus_dir() -> Path:
    return Path(os.environ.get("TILTFLOW_CORPUS", REPO.parent / "shared" / "corpus"))


# -- seeds: valid files ------------------------------------------------------------------------------
def _seed_mdoc() -> bytes:
    from tiltflow.testing.acquisition import plan_series
    from tiltflow.testing.config import DemoConfig
    from tiltflow.testing.demo import series_rng
    from tiltflow.testing.mdoc_writer import format_mdoc

    config = DemoConfig(n_series=1, n_tilts=5, size=(64, 64), n_frames=2, seed=3)
    return format_mdoc(plan_series(config, 0, series_rng(config, 0))).encode()


def _seeds_from_corpus(folder: str, suffixes: tuple[str, ...], limit: int = 4) -> list[bytes]:
    where = corpus_dir() / folder
    if not where.is_dir():
        return []
    files = sorted(p for p in where.iterdir() if p.is_file() and p.name.endswith(suffixes))
    return [p.read_bytes()[:100_000] for p in files[:limit]]


def _seed_star() -> bytes:
    path = WORK / "seed.star"
    write_motion_star(path, np.arange(8, dtype=float).reshape(4, 2) / 3, movie="m.tif", pixel_size_a=1.5)
    return path.read_bytes()


def _seed_xf() -> bytes:
    path = WORK / "seed.xf"
    write_xf(path, torch.tensor([[1.0, 0.0, 0.0, 1.0, 2.5, -3.25], [0.99, -0.1, 0.1, 0.99, 0.0, 1.0]]))
    return path.read_bytes()


SEEDS = {
    "mdoc": [_seed_mdoc(), *_seeds_from_corpus("mdoc", (".mdoc",))],
    "star": [_seed_star(), *_seeds_from_corpus("relion", (".star",), 2)],
    "rawtlt": [
        b"-30\n-15\n0\n15\n30\n",
        b"  -60.01  1\n -57.0  2\n",
        *_seeds_from_corpus("aretomo", (".rawtlt", ".tlt")),
    ],
    "xf": [_seed_xf(), *_seeds_from_corpus("aretomo", (".xf",))],
    "aln": _seeds_from_corpus("aretomo", (".aln",))
    or [
        b"# AreTomo Alignment / Priims bprmMn\n# RawSize = 64 64 2\n"
        b"# NumPatches = 0\n# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT\n"
        b"0 85 1 0 0 1 1 1 0 -3\n1 85 1 0 0 1 1 1 0 3\n"
    ],
    "workflow": [(REPO / "src/tiltflow/workflow/templates/tutorial.json").read_bytes()],
    "scipion": _seeds_from_corpus("scipion", (".json.template", ".json"), 2)
    or [
        b'[{"object.className": "ProtImportTsMovies", "object.id": "2", "filesPath": "/data", '
        b'"filesPattern": "*.mdoc"}]'
    ],
}

# values a careless or hostile file holds where a number should be
ODD_VALUES = [
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"1e999",
    b"-1e400",
    b"",
    b" ",
    b"0",
    b"-0",
    b"1,5",
    b"0x10",
    b"9" * 400,
    b"1e-400",
    b"[",
    b"]",
    b"=",
    b'"',
    b"{}",
    b"[]",
    b"null",
    b"true",
    b"\xff\xfe",
    b"\x00",
    b"\r",
    b"\t",
    b"# ",
    b"data_",
    b"loop_",
    b"_rln",
    b"[ZValue = 0]",
    b"[T = x]",
]


@st.composite
def mutated(draw, kind: str) -> bytes:
    """A valid file of ``kind`` with 1-4 edits: a line dropped, repeated or swapped, a byte range
    cut, spliced or replaced, a number replaced by an odd value."""
    data = bytearray(draw(st.sampled_from(SEEDS[kind])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop_line", "dup_line", "swap_lines", "cut", "insert", "odd_number", "truncate"]))
        lines = bytes(data).split(b"\n")
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "drop_line" and lines:
            del lines[i]
        elif op == "dup_line" and lines:
            lines.insert(i, lines[i])
        elif op == "swap_lines" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "odd_number":
            import re

            numbers = list(re.finditer(rb"-?\d+\.?\d*(?:[eE][-+]?\d+)?", lines[i])) if lines else []
            if numbers:
                m = numbers[draw(st.integers(0, len(numbers) - 1))]
                lines[i] = lines[i][: m.start()] + draw(st.sampled_from(ODD_VALUES)) + lines[i][m.end() :]
        data = bytearray(b"\n".join(lines))
        n = len(data)
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, min(n, a + 64)))
        if op == "cut":
            del data[a:b]
        elif op == "insert":
            data[a:a] = draw(st.binary(min_size=1, max_size=32) | st.sampled_from(ODD_VALUES))
        elif op == "truncate":
            del data[a:]
    return bytes(data)


def any_file(kind: str):
    return st.binary(max_size=600) | mutated(kind)


_written = iter(range(10**9))


def _write(name: str, content: bytes) -> Path:
    """A new file per example (readers that cache by name and time see each one)."""
    folder = WORK / str(next(_written))
    folder.mkdir()
    path = folder / name
    path.write_bytes(content)
    return path


def _one_line(err: BaseException, path: Path) -> None:
    text = str(err)
    assert "\n" not in text.strip(), f"a multi-line message: {text!r}"
    assert path.name in text, f"the message does not name the file: {text!r}"


# -- the properties ------------------------------------------------------------------------------------
@FUZZ
@given(content=any_file("mdoc"))
@example(content=b"[ZValue = 0]\nTiltAngle = 1\n[ZValue = 0]\nTiltAngle = 2\n")
@example(content=b"[ZValue = 0]\nTiltAngle = nan\n[ZValue = 1]\nTiltAngle = 2\n")
def test_mdoc_reader(content):
    path = _write("TS_fuzz.mdoc", content)
    for read in (lambda: read_tilt_series_mdoc(path), lambda: read_mdocs([path])):
        try:
            read()
        except MdocError as err:  # NotATiltSeriesError is one too
            if read is not None and "\n" in str(err):
                continue  # read_mdocs lists one line per file: one file here
            _one_line(err, path)


@FUZZ
@given(content=any_file("star"))
@example(content=b"data_global_shift\nloop_\n_rlnMicrographFrameNumber #1\n1\n")
@example(content=b"data_\n")
def test_motion_star_reader(content):
    path = _write("fuzz.star", content)
    try:
        shifts = read_motion_star(path)
    except StarFormatError as err:
        _one_line(err, path)
    else:
        assert shifts.ndim == 2 and shifts.shape[1] == 2 and np.isfinite(shifts).all()


@FUZZ
@given(content=any_file("star"))
def test_relion_tilt_series_star_reader(content):
    path = _write("fuzz_ts.star", content)
    try:
        read_tilt_series_star(path)
    except RelionFormatError as err:
        _one_line(err, path)


@FUZZ
@given(content=any_file("rawtlt"))
@example(content=b"-30\n1e400\n0\n")
@example(content=b"\xff\xfe-3\x000\n")
def test_tlt_reader(content):
    path = _write("fuzz.rawtlt", content)
    try:
        angles = read_tlt(path)
    except ImodFormatError as err:
        _one_line(err, path)
    else:
        assert torch.isfinite(angles).all()


@FUZZ
@given(content=any_file("rawtlt"))
def test_import_tilt_series_rawtlt(content):
    """The ``.rawtlt`` beside a stack as ``import-tilt-series`` reads it."""
    from tiltflow.workflow.steps.import_tilt_series import _angles_from_tlt

    path = _write("TS_fuzz.rawtlt", content)
    stack = path.with_suffix(".st")
    try:
        values, _ = _angles_from_tlt(stack)
    except InputError as err:
        _one_line(err, path)
    else:
        assert all(abs(v) <= 90 for v in values)


@FUZZ
@given(content=any_file("xf"))
@example(content=b"1 0 0 1 nan 0\n")
@example(content=b"1 0 0 1 1e999 0\n")
def test_xf_reader(content):
    path = _write("fuzz.xf", content)
    try:
        xf = read_xf(path)
    except ImodFormatError as err:
        _one_line(err, path)
    else:
        assert xf.shape[1] == 6 and torch.isfinite(xf).all()


@FUZZ
@given(content=any_file("aln"))
@example(content=b"# AreTomo Alignment\n# RawSize = 1 2\n")
@example(content=b"# AreTomo Alignment\n# RawSize = 4 4 -1\n# NumPatches = -3\n")
@example(content=b"# AreTomo Alignment\n# RawSize = 4 4 1\n# SEC ROT\n nan 1 1 0 0 1 1 1 0 3\n")
def test_aln_reader(content):
    path = _write("fuzz.aln", content)
    try:
        aln = read_aln(path)
        aln.raw_tilt_angles()
    except AlnFormatError as err:
        _one_line(err, path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "steps",
                    "step",
                    "id",
                    "params",
                    "inputs",
                    "name",
                    "tiltflow_workflow",
                    "object.className",
                    "object.id",
                    "input",
                    "files",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _not_scipion(value) -> bool:
    """A list of objects is read as a Scipion workflow (the property below)."""
    return not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value))


def _check_workflow(content: bytes, name: str = "fuzz_workflow.json") -> None:
    path = _write(name, content)
    try:
        validate(load_workflow(path))
    except InputError as err:
        assert err.problems and all("\n" not in line for line in err.problems), err.problems


@FUZZ
@given(
    content=st.binary(max_size=400)
    | mutated("workflow")
    | JSON.filter(_not_scipion).map(lambda v: json.dumps(v).encode())
)
@example(content=b"[1, 2, 3]")
@example(content=b'{"tiltflow_workflow": 99, "steps": [{"step": "ctf"}]}')
@example(content=b'{"steps": [{"step": "ctf", "params": {"window": []}, "inputs": {"input": {"a": 1}}}]}')
def test_workflow_file_reader(content):
    _check_workflow(content)


@FUZZ
@given(
    content=mutated("scipion")
    | st.lists(
        st.dictionaries(
            st.sampled_from(
                ["object.className", "object.id", "inputSetOfTiltSeries", "filesPath", "binning", "inputMovies"]
            ),
            JSON,
            max_size=4,
        ),
        min_size=1,
        max_size=3,
    ).map(lambda v: json.dumps(v).encode())
)
def test_scipion_workflow_reader(content):
    _check_workflow(content)


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_the_seeds_are_valid(kind, tmp_path):
    """Mutations start from files each reader accepts."""
    read = {
        "mdoc": read_tilt_series_mdoc,
        "star": None,
        "rawtlt": read_tlt,
        "xf": read_xf,
        "aln": read_aln,
        "workflow": load_workflow,
        "scipion": load_workflow,
    }[kind]
    for i, seed in enumerate(SEEDS[kind][:1]):
        path = tmp_path / f"seed{i}.{'json' if kind in ('workflow', 'scipion') else kind}"
        path.write_bytes(seed)
        if kind == "star":
            assert read_motion_star(path).shape == (4, 2)
        else:
            read(path)
