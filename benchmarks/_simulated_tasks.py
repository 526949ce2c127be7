"""Step tasks for the simulator's movies: what the benchmarks run the motion-ctf step's own task on."""

from __future__ import annotations

from tiltflow.workflow.steps.motion_tasks import MovieSetup, MovieTask


def simulated_movie_task(series: dict, index: int, movie: str, setup: MovieSetup, *, out_dir: str) -> MovieTask:
    """The motion-ctf task of movie ``movie``, tilt ``index`` (acquisition order) of a simulated
    ``series`` (the simulator's truth dict), with the values its mdoc states (angles, axis, doses)."""
    tilt = series["tilts"][index]
    return MovieTask(
        key=movie,
        movie=movie,
        setup=setup,
        pixel_size_a=series["pixel_size_a"],
        voltage_kv=series["voltage_kv"],
        cs_mm=series["cs_mm"],
        amplitude_contrast=series["amplitude_contrast"],
        tilt_angle_deg=tilt["mdoc_tilt_angle_deg"],
        tilt_axis_deg=series["mdoc_tilt_axis_deg"],
        prior_dose=tilt["prior_dose_e_a2"],
        dose=tilt["dose_e_a2"],
        out_dir=out_dir,
        name=f"m{index:03d}",
    )
