"""Stacks made by other programs (issue 11, item 6): FEI's signed int16 with a negative mean and
per-view normalised float stacks go through every step with the defaults."""

import numpy as np
import pytest
import torch

from tiltflow.core.align.residuals import alignment_residual_against_truth
from tiltflow.io.mrc import write_mrc
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.tilt_series import noisy_tilt_series
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore


@pytest.fixture(scope="module")
def series():
    s = noisy_tilt_series(DemoConfig(n_series=1, n_tilts=21, size=(256, 256), pixel_size_a=5.5, n_beads=14, seed=2))
    return {"views": s.views.numpy(), "truth": s.truth, "proj": s.proj, "angles": s.mdoc.tolist()}


def _signed(v: np.ndarray) -> np.ndarray:
    return (v - 3.0 * v.mean()).round().astype(np.int16)


def _normalised(v: np.ndarray) -> np.ndarray:
    return ((v - v.mean(axis=(1, 2), keepdims=True)) / v.std(axis=(1, 2), keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("convert", [_signed, _normalised], ids=["int16 negative mean", "normalised float"])
def test_every_step_takes_a_stack_that_is_not_counts(series, convert, tmp_path):
    views = convert(series["views"])
    write_mrc(tmp_path / "TS_01.st", views, voxel_size_a=5.5)
    (tmp_path / "TS_01.rawtlt").write_text("".join(f"{a:.3f}\n" for a in series["angles"]))
    store = ProjectStore(tmp_path / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(tmp_path),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "tilt_axis_deg": series["truth"]["mdoc_tilt_axis_deg"],
        },
    )
    run_step(store, "ctf", {"window_px": 128}, {"input": str(imp.id)})
    erased = run_step(store, "xray-erase", {}, {"input": str(imp.id)})
    for method in ("patch", "fiducial"):
        aligned = run_step(store, "align", {"method": method, "binning": 1}, {"input": f"{erased.id}"})
        ts = store.load(store.resolve(str(aligned.id))).items[0]
        assert ts.alignment["verdict"]["status"] in ("good", "check")
        xf = torch.tensor([im.transform for im in ts.images], dtype=torch.float64)
        refined = torch.tensor([im.refined_tilt_angle_deg for im in ts.images], dtype=torch.float64)
        res = alignment_residual_against_truth(xf, refined, series["proj"], (256, 256))
        print(f"{convert.__name__} {method}: honest residual {res:.2f} px")
        assert res <= 1.0
        rec = run_step(store, "reconstruct", {"binning": 2, "thickness_nm": 100.0}, {"input": str(aligned.id)})
        assert store.load(store.resolve(str(rec.id))).items[0].shape == (91, 128, 128)  # 100 nm at 11 Å per voxel
