"""The accuracy matrix (issue 11, item 1): scenarios drawn within their ranges and reproducible, and
the ``--quick`` harness of ``benchmarks/accuracy_matrix.py`` run in-process on its 3 small scenarios.

Targets are asserted only where today's code meets them; the others are xfail (not strict) naming
the issue 11 item that works on them, to be tightened when that work lands."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tiltflow.testing.scenarios import RANGES, Scenario, draw_scenario, draw_scenarios

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

QUANTITIES = [
    "motion RMS (px)", "CTF median |d defocus| |tilt| <= 30 (Å)", "CTF median |d defocus| |tilt| > 30 (Å)",
    "X-ray hits erased (fraction)", "X-ray: erased pixels on beads", "fiducial residual vs truth (px)",
    "fiducial angles vs truth (°)", "patch residual vs truth (px)", "patch angles vs truth (°)",
]
PENDING = {  # quantity -> the issue 11 item whose work should make it hold on the quick scenarios
    "motion RMS (px)": "issue 11 item 2 (motion within 1.5x oracle and <= 0.15 px)",
    "CTF median |d defocus| |tilt| <= 30 (Å)": "issue 11 item 3 (CTF medians)",
    "CTF median |d defocus| |tilt| > 30 (Å)": "issue 11 item 3 (CTF medians)",
    "X-ray hits erased (fraction)": "issue 11 item 4 (X-rays >= 99 % erased)",
    "patch residual vs truth (px)": "issue 11 item 5 (patch alignment <= 1 px or failed)",
    "patch angles vs truth (°)": "issue 11 item 5 (patch angles within 3° or failed)",
}


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one torch thread is several times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- scenarios -----------------------------------------------------------------------------------

def _within(value: float, key: str) -> bool:
    lo, hi = RANGES[key]
    return lo - 1e-9 <= value <= hi + 1e-9


def test_scenarios_are_drawn_within_the_stated_ranges():
    scenarios = draw_scenarios(60, seed=3)
    for s in scenarios:
        for key in ("pixel_size_a", "dose_e_px_frame", "n_frames", "ice_thickness_nm", "field_ratio",
                    "n_beads", "bead_diameter_nm", "drift_px_per_frame", "jitter_px", "defocus_um",
                    "defocus_slope_a_per_deg", "astigmatism_a", "astigmatism_drift_a", "tilt_offset_deg",
                    "tilt_axis_error_deg", "gain_stripe_amplitude", "n_dark_views", "tilt_step_deg"):
            assert _within(getattr(s, key), key), (s.name, key, getattr(s, key))
        assert 1 <= s.xray_events_per_frame[0] <= s.xray_events_per_frame[1] <= 5
        assert s.xray_counts == (40.0, 250.0)
        assert 128 <= s.size_px <= 320 and s.size_px % 32 == 0
        assert s.tilt_step_deg * (s.n_tilts // 2 - 1) > 30  # views beyond 30° survive 2 dark ones
        config = s.demo_config()  # valid for the simulator (its own checks run here)
        assert config.n_series == 1 and config.size == (s.size_px, s.size_px)
        assert math.isclose(config.dose_per_tilt_e_a2 * s.pixel_size_a**2 / s.n_frames, s.dose_e_px_frame)
    # the draw spans the ranges, not a corner of them
    px = [s.pixel_size_a for s in scenarios]
    assert min(px) < 1.2 and max(px) > 4.0
    assert len({s.n_beads for s in scenarios}) > 10 and any(s.eer for s in scenarios)
    assert {s.n_dark_views for s in scenarios} == {0, 1, 2}
    assert max(s.n_frames for s in scenarios) > 20 and min(s.n_frames for s in scenarios) < 10


def test_scenarios_are_reproducible_from_the_seed():
    a, b = draw_scenarios(5, seed=7), draw_scenarios(5, seed=7)
    assert a == b
    assert draw_scenarios(3, seed=7) == a[:3]  # scenario i depends only on (seed, i)
    assert draw_scenario(7, 4) == a[4]
    assert draw_scenarios(5, seed=8) != a


def test_a_cropped_field_is_reported_and_unconstrained_draws_reach_wide_fields():
    wide = [draw_scenario(1, i, fit_field=False) for i in range(40)]
    assert max(s.field_ratio for s in wide) > 5.0
    assert all(_within(s.ice_thickness_nm, "ice_thickness_nm") for s in wide)
    s = replace(wide[0], size_px=128, pixel_size_a=1.0, ice_thickness_nm=200.0)
    assert s.simulated_field_ratio == pytest.approx(12.8 / 200.0)
    assert "0.1x ice" in s.describe()
    assert isinstance(s, Scenario)


# --- the harness ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import accuracy_matrix

    torch.set_num_threads(1)
    scenarios = accuracy_matrix.matrix_scenarios(3, 0, quick=True)
    lines: list[str] = []
    results = accuracy_matrix.run_matrix(scenarios, tmp_path_factory.mktemp("matrix"), log=lines.append)
    return results, lines


def _rows(results, quantity):
    return [(r["scenario"]["name"], next(row for row in r["rows"] if row["quantity"] == quantity))
            for r in results]


def test_quick_harness_gives_every_row_with_finite_values(quick):
    results, lines = quick
    assert len(results) == 3
    for r in results:
        assert [row["quantity"] for row in r["rows"]] == QUANTITIES
        for row in r["rows"]:
            assert not row["note"].startswith("error:"), (r["scenario"]["name"], row)
            if row["verdict"] == "failed" and row["quantity"].startswith(("fiducial", "patch")):
                continue  # a refused alignment has nothing to measure
            assert math.isfinite(row["value"]), (r["scenario"]["name"], row)
            assert row["holds"] in (True, False)
        motion = r["rows"][0]
        assert math.isfinite(motion["oracle"]) and motion["oracle"] < 0.5  # the oracle is the noise floor
        assert r["seconds"]["total"] > 0
    # each scenario's description and rows were printed as they came
    assert sum(line.startswith("S0") and ":" in line[:4] for line in lines) == 3
    assert sum("motion RMS" in line for line in lines) == 3


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_quick_targets(quick, quantity, request):
    if quantity in PENDING:
        request.applymarker(pytest.mark.xfail(strict=False, reason=PENDING[quantity]))
    results, _ = quick
    failing = [(name, row["value"], row["note"]) for name, row in _rows(results, quantity) if not row["holds"]]
    assert not failing, failing


def test_table_and_json_output(quick, capsys):
    import json

    import accuracy_matrix

    results, _ = quick
    back = json.loads(json.dumps(results, default=str))
    assert back[0]["rows"][0]["quantity"] == "motion RMS (px)"
    accuracy_matrix.print_table(results)
    out = capsys.readouterr().out
    assert out.count("motion RMS (px)") == 3 and "judged rows hold" in out
    row = results[0]["rows"][0]
    assert accuracy_matrix.format_row("S00", row).startswith("S00  motion RMS (px)")
