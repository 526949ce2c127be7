"""The accuracy matrix (issue 11, item 1): scenarios drawn within their ranges and reproducible, each
simulated twice (movies at the unbinned pixel size; an alignment series at the align step's binning,
field 1-6x the ice), and the ``--quick`` harness of ``benchmarks/accuracy_matrix.py`` run in-process
on its 3 scenarios (simulated small).

Targets are asserted only where today's code meets them; the others are xfail (not strict) naming
the issue 11 item that works on them, to be tightened when that work lands."""

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import simulate_stack
from tiltflow.testing.scenarios import (
    MIN_BEAD_PX,
    RANGES,
    SimulationSizes,
    align_geometry,
    draw_scenario,
    draw_scenarios,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

QUANTITIES = [
    "motion RMS (px)",
    "CTF median |d defocus| |tilt| <= 30 (Å)",
    "CTF median |d defocus| |tilt| > 30 (Å)",
    "X-ray hits erased (fraction)",
    "X-ray: erased pixels on beads",
    "fiducial residual vs truth (px)",
    "fiducial angles vs truth (°)",
    "patch residual vs truth (px)",
    "patch angles vs truth (°)",
]
PENDING = {  # quantity -> the issue 11 item whose work should make it hold on the quick scenarios
    # 6 frames at 3 e/px/frame: even the trajectory prior's setting picked with the truth gives 0.287 / 0.242 /
    # 0.473 px against 1.5x the noise-free oracle 0.105 / 0.063 / 0.182 (benchmarks/motion_reference_floor.py)
    "motion RMS (px)": "issue 11 item 2 (motion within 1.5x oracle: out of the estimator's reach on 6-frame movies)",
    "CTF median |d defocus| |tilt| > 30 (Å)": "issue 11 item 3 (CTF medians)",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- scenarios ---------------------------------------------------------------------------------


def _within(value: float, key: str) -> bool:
    lo, hi = RANGES[key]
    return lo - 1e-9 <= value <= hi + 1e-9


def test_scenarios_are_drawn_within_the_stated_ranges():
    scenarios = draw_scenarios(60, seed=3)
    for s in scenarios:
        for key in (
            "pixel_size_a",
            "dose_e_px_frame",
            "n_frames",
            "ice_thickness_nm",
            "field_ratio",
            "n_beads",
            "bead_diameter_nm",
            "drift_px_per_frame",
            "jitter_px",
            "defocus_um",
            "defocus_slope_a_per_deg",
            "astigmatism_a",
            "astigmatism_drift_a",
            "tilt_offset_deg",
            "tilt_axis_error_deg",
            "gain_stripe_amplitude",
            "n_dark_views",
        ):
            assert _within(getattr(s, key), key), (s.name, key, getattr(s, key))
        assert 1 <= s.xray_events_per_frame[0] <= s.xray_events_per_frame[1] <= 5
        assert s.xray_counts == (40.0, 250.0)
        movie = s.movie_config()  # valid for the simulator (its own checks run here)
        assert movie.n_series == 1 and movie.size == (512, 512) and movie.pixel_size_a == s.pixel_size_a
        assert math.isclose(movie.dose_per_tilt_e_a2 * s.pixel_size_a**2 / s.n_frames, s.dose_e_px_frame)
        assert movie.max_nominal_tilt_deg() == 60 and movie.n_dark_views == 0
        assert movie.prior_dose_scale == pytest.approx(20 / 3)  # 41 tilts at 3° stand behind 7 at 20°
        assert s.window_px == 512
        align = s.align_config()
        assert align.n_tilts == 41 and align.tilt_step_deg == 3.0 and align.max_nominal_tilt_deg() == 60
        assert align.pixel_size_a == pytest.approx(s.pixel_size_a * s.align_binning)
        assert align.dose_per_tilt_e_a2 == movie.dose_per_tilt_e_a2  # the same dose per Å²
        assert 256 <= s.align_size_px <= 320 and s.align_size_px % 32 == 0
        assert align.n_dark_views == s.n_dark_views and align.n_beads == s.n_beads
        # the field: at most the camera's, beads >= 4 binned px across unless unbinned
        assert s.align_field_nm <= 4096 * s.pixel_size_a / 10 * 1.1
        assert s.align_binning == 1 or s.bead_diameter_nm * 10 / s.align_pixel_size_a >= MIN_BEAD_PX
        assert 0 <= s.movie_n_beads <= s.n_beads
    # the draw spans the ranges, not a corner of them; most alignment fields keep the drawn ratio
    px = [s.pixel_size_a for s in scenarios]
    assert min(px) < 1.2 and max(px) > 4.0
    assert len({s.n_beads for s in scenarios}) > 10 and any(s.eer for s in scenarios)
    assert {s.n_dark_views for s in scenarios} == {0, 1, 2}
    assert max(s.n_frames for s in scenarios) > 20 and min(s.n_frames for s in scenarios) < 10
    ratios = [s.align_field_ratio for s in scenarios]
    assert min(ratios) > 0.95  # a field at least as wide as the ice is thick (to the 32 px rounding)
    assert min(ratios) < 1.5 and max(ratios) > 4.5
    for s in scenarios:  # the drawn field is kept (to the 32-px rounding) unless camera or beads limit it
        kept = s.align_field_ratio >= s.field_ratio * 0.85
        camera = s.align_field_nm >= 0.85 * 4096 * s.pixel_size_a / 10
        beads = s.align_binning == max(1, math.floor(s.bead_diameter_nm * 10 / MIN_BEAD_PX / s.pixel_size_a))
        assert kept or camera or beads, s.describe()
    assert sum(abs(s.align_field_ratio / s.field_ratio - 1) < 0.15 for s in scenarios) > len(scenarios) / 3
    assert len({s.align_binning for s in scenarios}) >= 5


def test_scenarios_are_reproducible_from_the_seed():
    a, b = draw_scenarios(5, seed=7), draw_scenarios(5, seed=7)
    assert a == b
    assert draw_scenarios(3, seed=7) == a[:3]  # scenario i depends only on (seed, i)
    assert draw_scenario(7, 4) == a[4]
    assert draw_scenarios(5, seed=8) != a
    small = draw_scenario(7, 4, SimulationSizes(movie_size_px=256, align_max_px=224, align_min_px=160))  # small,
    assert small.pixel_size_a == a[4].pixel_size_a and small.n_beads == a[4].n_beads  # drawn the same


def test_alignment_geometry_bins_to_the_view_and_keeps_beads_visible():
    # 1.38 Å, 150 nm ice, 3x: 450 nm = 3261 unbinned px -> bin 9 to fit 384 px
    binning, side = align_geometry(1.38, 150.0, 3.0, 10.0, min_px=256, max_px=384, camera_px=4096)
    assert binning == 9 and side == 352
    # 5 nm beads at 1.38 Å: no coarser than 12.5 Å (bin 9), the field shrinks instead of the beads
    binning, side = align_geometry(1.38, 300.0, 6.0, 5.0, min_px=256, max_px=384, camera_px=4096)
    assert binning == 9 and side == 384
    # a field narrower than the minimum view is shown at the minimum, unbinned
    assert align_geometry(5.5, 50.0, 1.0, 10.0, min_px=256, max_px=384, camera_px=4096) == (1, 256)
    # the camera limits the field: 4096 px at 0.8 Å is 328 nm
    binning, side = align_geometry(0.8, 300.0, 6.0, 15.0, min_px=256, max_px=384, camera_px=4096)
    assert binning * side * 0.8 / 10 <= 4096 * 0.8 / 10 * 1.05


def test_simulate_stack_gives_the_summed_dose_in_tilt_order_at_the_binned_pixel():
    s = replace(draw_scenario(0, 4), align_size_px=96, align_n_tilts=5, align_tilt_step_deg=20.0, n_dark_views=1)
    config = s.align_config()
    stack, truth = simulate_stack(config)
    assert stack.shape == (5, 96, 96) and stack.dtype == np.float32
    angles = [truth["tilts"][i]["mdoc_tilt_angle_deg"] for i in truth["tilt_order_by_angle"]]
    assert angles == sorted(angles) and truth["pixel_size_a"] == pytest.approx(s.align_pixel_size_a)
    for k, i in enumerate(truth["tilt_order_by_angle"]):
        t = truth["tilts"][i]
        expected = t["mean_counts_per_frame_px"] * config.n_frames
        assert float(np.median(stack[k])) == pytest.approx(expected, rel=0.25), k  # dark: in the flux
    assert sum(bool(t.get("dark_view")) for t in truth["tilts"]) == 1
    again, _ = simulate_stack(config)
    assert np.array_equal(stack, again)


def test_prior_dose_scale_stands_a_few_tilts_for_the_full_series():
    from tiltflow.testing.acquisition import plan_series
    from tiltflow.testing.demo import series_rng

    base = DemoConfig(n_series=1, n_tilts=7, tilt_step_deg=20.0, size=(64, 64), n_frames=2)
    plain = plan_series(base, 0, series_rng(base, 0))
    scaled_config = replace(base, prior_dose_scale=20 / 3)
    scaled = plan_series(scaled_config, 0, series_rng(scaled_config, 0))
    for a, b in zip(plain["tilts"], scaled["tilts"], strict=False):
        assert b["prior_dose_e_a2"] == pytest.approx(a["prior_dose_e_a2"] * 20 / 3)
        assert b["dose_e_a2"] == a["dose_e_a2"] and b["frame_shifts_px"] == a["frame_shifts_px"]
    assert scaled_config.extension_values() == {"prior_dose_scale": 20 / 3} and base.extension_values() == {}
    with pytest.raises(ValueError, match="prior_dose_scale"):
        replace(base, prior_dose_scale=-1.0)


# --- the harness ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import accuracy_matrix

    scenarios = accuracy_matrix.matrix_scenarios(3, 0, quick=True)
    lines: list[str] = []
    results = accuracy_matrix.run_matrix(scenarios, tmp_path_factory.mktemp("matrix"), log=lines.append)
    return results, lines


def _rows(results, quantity):
    return [(r["scenario"]["name"], next(row for row in r["rows"] if row["quantity"] == quantity)) for r in results]


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
        sc = r["scenario"]  # the two simulations of the scenario
        assert sc["align_pixel_size_a"] > sc["pixel_size_a"] or sc["align_binning"] == 1
        assert sc["align_field_ratio"] > 0.95 and sc["movie_size_px"] == 256
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


def test_ctf_misses_are_never_silent(quick):
    """Each CTF row carries the noise-free oracle and the series pass's verdict; a median beyond its
    target is never reported with a 'good' verdict (the spectra's ring evidence says so)."""
    results, _ = quick
    for quantity in QUANTITIES[1:3]:
        for name, row in _rows(results, quantity):
            assert row["oracle"] is not None and math.isfinite(row["oracle"]), (name, row)
            assert row["verdict"] in ("good", "check", "failed"), (name, row)
            assert row["holds"] or row["verdict"] != "good", (name, row)


def test_alignment_series_show_their_beads(quick):
    """The alignment series is simulated at the step's binning over a field wider than the ice: where
    the scenario puts >= 5 beads in view, the fiducial route finds enough of them to align (it does
    not refuse for want of beads to seed, as it did on unbinned 256-px crops)."""
    results, _ = quick
    checked = 0
    for name, row in _rows(results, "fiducial residual vs truth (px)"):
        seen = int(row["note"].split(" beads in the 0° view")[0])
        if seen >= 5:
            checked += 1
            assert row["verdict"] != "failed" and math.isfinite(row["value"]), (name, row)
    assert checked >= 2


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
