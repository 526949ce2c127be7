import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpus_dir() -> Path:
    return Path(os.environ.get("TILTFLOW_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture
def corpus() -> Path:
    path = corpus_dir()
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path
