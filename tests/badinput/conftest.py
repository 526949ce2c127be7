"""Fixtures of the bad-input catalogue (issue 13): a small project with a movie set (run 1) and a
stack set (run 2), copied for each test, and a movie folder to spoil."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tiltflow.testing.demo import DemoConfig, write_demo_dataset

from ._cli import invoke, write_stack


@pytest.fixture(scope="session")
def movie_data(tmp_path_factory) -> Path:
    """1 series, 3 tilts of 128 x 96 px, 3 frames, 2.76 Å/px, 300 kV; a gain reference."""
    out = tmp_path_factory.mktemp("movies")
    write_demo_dataset(out, DemoConfig(n_series=1, n_tilts=3, size=(128, 96), n_frames=3, seed=1))
    return out


@pytest.fixture(scope="session")
def pristine_project(movie_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project") / "p"
    assert invoke(["import-movies", "-p", root, "--files", movie_data,
                   "--gain", movie_data / "gain_ref.gain"]).exit_code == 0
    stacks = write_stack(tmp_path_factory.mktemp("stacks")).parent
    result = invoke(["import-tilt-series", "-p", root, "--files", stacks, "--pattern", "*.st", "--voltage", "300"])
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def project(pristine_project, tmp_path) -> Path:
    """A copy of the project: run 1 = movies (TiltSeriesM), run 2 = stacks (TiltSeries)."""
    return Path(shutil.copytree(pristine_project, tmp_path / "p"))


@pytest.fixture
def data(movie_data, tmp_path) -> Path:
    """A copy of the movie folder to spoil."""
    return Path(shutil.copytree(movie_data, tmp_path / "data"))
