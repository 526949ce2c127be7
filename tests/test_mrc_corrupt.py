"""A corrupt or truncated MRC stack (issue 13, row 17): one line naming the file and what is wrong —
no mrcfile warnings, no traceback, no absurd section count."""

import os
import re
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.io.mrc import StackError, read_section, read_stack, read_stack_header, write_mrc

ANGLES = [-9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0]


def _good(folder, name="TS_01.st"):
    path = write_mrc(
        folder / name, np.random.default_rng(0).normal(size=(7, 40, 48)).astype(np.float32), voxel_size_a=2.5
    )
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    return path


def _truncated(folder):
    path = _good(folder)
    data = path.read_bytes()
    path.write_bytes(data[: 1024 + 3 * 40 * 48 * 4 + 100])  # 3 sections and a bit of a fourth
    return path


def _garbage_header(folder):
    path = _good(folder)
    data = bytearray(path.read_bytes())
    data[:1024] = np.random.default_rng(3).integers(0, 256, 1024, dtype=np.uint8).tobytes()
    data[8:12] = struct.pack("<i", 1061376589)  # the section count of the report
    path.write_bytes(bytes(data))
    return path


def _huge_section_count(folder):
    path = _good(folder)
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<i", 1061376589)  # a plausible header otherwise
    path.write_bytes(bytes(data))
    return path


def _short(folder):
    path = folder / "TS_01.st"
    path.write_bytes(b"MRC?" * 50)  # not even a header
    (folder / "TS_01.rawtlt").write_text("".join(f"{a}\n" for a in ANGLES))
    return path


CASES = {
    "truncated": (_truncated, r"truncated.*7 sections.*48 x 40.*float32.*bytes"),
    "garbage header": (_garbage_header, r"not a readable MRC.*corrupt"),
    "huge section count": (_huge_section_count, r"corrupt or truncated.*1061376589 sections.*file holds"),
    "shorter than a header": (_short, r"200 bytes.*1024-byte"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_header_reader_gives_one_line_and_no_warnings(case, tmp_path):
    make, pattern = CASES[case]
    path = make(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StackError) as info:
            read_stack_header(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert re.search(pattern, message), message
    assert "tilt angles" not in message
    assert not caught, [str(w.message) for w in caught]


def test_section_readers_name_the_file(tmp_path):
    path = _truncated(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for read in (lambda: read_section(path, 5), lambda: read_stack(path)):
            with pytest.raises(StackError, match=re.escape(str(path)) + ".*truncated"):
                read()
    assert not caught, [str(w.message) for w in caught]


def test_good_stack_still_reads(tmp_path):
    path = _good(tmp_path)
    header = read_stack_header(path)
    assert header.n_sections == 7 and header.size == (48, 40) and header.pixel_size_a == pytest.approx(2.5)
    assert read_section(path, 6).shape == (40, 48)


@pytest.mark.parametrize("case", list(CASES))
def test_cli_import_prints_one_line_and_exits_2(case, tmp_path):
    make, pattern = CASES[case]
    folder = tmp_path / "stacks"
    folder.mkdir()
    path = make(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(
            build_cli(),
            [
                "import-tilt-series",
                "-p",
                str(tmp_path / "p"),
                "--files",
                str(folder),
                "--pattern",
                "{TS}.st",
                "--voltage",
                "300",
            ],
        )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and str(path) in lines[0] and re.search(pattern, lines[0]), lines
    assert not caught, [str(w.message) for w in caught]


def test_cli_in_a_fresh_process_has_no_warning_lines(tmp_path):
    """Outside pytest (which swallows warnings) a user sees exactly one line on stderr."""
    folder = tmp_path / "stacks"
    folder.mkdir()
    path = _garbage_header(folder)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    code = "from tiltflow.cli.main import main; main()"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "import-tilt-series",
            "-p",
            str(tmp_path / "p"),
            "--files",
            str(folder),
            "--pattern",
            "{TS}.st",
            "--voltage",
            "300",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], lines
