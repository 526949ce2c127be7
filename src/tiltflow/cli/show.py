"""``tiltflow show [ID]``: runs, outputs and summaries; ``--json`` down to every tilt image."""

from __future__ import annotations

from typing import Any

import click

from tiltflow.cli.output import console, echo_json, fail


def _duration(run) -> str:
    if run.started and run.ended:
        return f"{run.ended - run.started:.1f} s"
    return ""


@click.command("show")
@click.argument("run_id", required=False)
@click.option("-p", "--project", default=".", show_default=True, help="Project folder.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, down to every item.")
def show_command(run_id: str | None, project: str, as_json: bool) -> None:
    """List the runs of a project, or one run with its parameters, inputs and outputs.

    Examples: tiltflow show -p P; tiltflow show -p P 1 --json
    """
    from tiltflow.workflow.errors import ProjectError
    from tiltflow.workflow.store import ProjectStore

    try:
        store = ProjectStore(project, create=False)
        if run_id is None:
            _show_runs(store, as_json)
        else:
            _show_run(store, _run_number(run_id, project), as_json)
    except (ProjectError, ValueError) as err:
        fail([str(err)])


def _run_number(run_id: str, project: str) -> int:
    from tiltflow.workflow.errors import ProjectError

    head = str(run_id).split(".")[0].strip()
    if not head.isdigit():
        raise ProjectError(
            f"run '{run_id}': expected a run number such as 1 (or 3.TiltSeries) — "
            f"`tiltflow show -p {project}` lists the runs"
        )
    return int(head)


def _show_runs(store, as_json: bool) -> None:
    """Every run: one line each, with its outputs, its error or hint, and its quality line."""
    from tiltflow.workflow.run_liveness import with_hint

    runs = store.runs()
    outputs = store.outputs()
    if as_json:
        echo_json(
            {
                "project": str(store.root),
                "runs": [
                    {
                        **r.to_dict(),
                        "outputs": [
                            {"name": o.name, "pointer": o.pointer, "type": o.type, "summary": o.summary}
                            for o in outputs
                            if o.run_id == r.id
                        ],
                    }
                    for r in runs
                ],
            }
        )
        return
    if not runs:
        console.print(f"{store.root}: no runs yet", markup=False)
    for r in runs:
        console.print(f"{r.id:>3}  {r.step:<20} {r.status:<10} {_duration(r):>8}  {r.label or ''}", markup=False)
        if r.status == "interrupted":
            console.print(f"       {with_hint(r, store.root)}", markup=False)
        elif r.status == "failed" and r.error:  # a summary: the first few, then "and N more"
            console.print(f"       error: {r.error}", markup=False)
        for o in outputs:
            if o.run_id == r.id:
                console.print(f"       {o.pointer}: {o.summary}", markup=False)
        quality = quality_line(store, r, [o for o in outputs if o.run_id == r.id])
        if quality:
            console.print(f"       quality: {quality}", markup=False)


def _show_run(store, rid: int, as_json: bool) -> None:
    """One run: status, folder, inputs, parameters (with the values read from files), quality,
    outputs with their verdicts, and the methods to cite."""
    from tiltflow.workflow.run_liveness import with_hint

    run = store.run(rid)
    outs = store.outputs(rid)
    if as_json:
        echo_json(
            {
                **run.to_dict(),
                "methods": list(step_methods(run.step)),
                "outputs": [_output_json(store, o) for o in outs],
            }
        )
        return
    console.print(f"run {run.id} {run.step} — {run.status} {_duration(run)}", markup=False)
    if run.status == "interrupted":
        console.print(f"  {with_hint(run, store.root)}", markup=False)
    elif run.error:
        console.print(f"  error: {run.error}", markup=False)
    console.print(f"  folder: {store.root / (run.run_dir or '')}", markup=False)
    console.print("  inputs: " + (", ".join(f"{k}={v}" for k, v in run.inputs.items()) or "none"), markup=False)
    console.print("  parameters:", markup=False)
    read = values_read(store, run, outs)
    for k, v in run.params.items():
        console.print(f"    {k} = {read.get(k, v) if v is None else v}", markup=False)
    quality = quality_line(store, run, outs)
    if quality:
        console.print(f"  quality: {quality}", markup=False)
    for o in outs:
        console.print(f"  output {o.pointer}: {o.summary}", markup=False)
        for line in _verdict_lines(store, o):
            console.print(f"    {line}", markup=False)
    methods = step_methods(run.step)
    if methods:  # what to cite for this run (Scipion's _methods)
        console.print("  methods:", markup=False)
        for line in methods:
            console.print(f"    {line}", markup=False)


def step_methods(step_id: str) -> tuple[str, ...]:
    """The published methods a step implements (its declaration's ``methods``); none for a step
    this version does not know."""
    from tiltflow.workflow.steps.base import get_step

    try:
        return get_step(step_id).methods
    except KeyError:
        return ()


def _verdict_lines(store, output) -> list[str]:
    """``TS_01: check (reason; reason)`` for each series of a tilt-series set (alignment) or a
    CTF set (series pass) that carries a verdict."""
    from tiltflow.workflow.sets import CtfSeriesSet, TiltSeriesSet, alignment_verdict, ctf_verdict, verdict_text

    if output.type not in ("TiltSeries", "CTFTomoSeries"):
        return []
    value = store.load(output)
    if isinstance(value, TiltSeriesSet):
        judged = [(ts.ts_id, alignment_verdict(ts)) for ts in value.items]
    elif isinstance(value, CtfSeriesSet):
        judged = [(s.ts_id, ctf_verdict(s)) for s in value.items]
    else:
        return []
    return [f"{ts_id}: {verdict_text(v)}" for ts_id, v in judged if v["status"]]


# acquisition values a run reads from its files when the user gave none (``voltage_kv = None``)
_READ = (
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "magnification",
    "pixel_size_a",
    "tilt_axis_deg",
    "dose_per_tilt_e_a2",
)


def values_read(store, run, outputs) -> dict[str, str]:
    """``{"voltage_kv": "300 (from the mdoc)"}`` for each empty acquisition parameter of ``run``,
    with the value(s) its tilt-series output carries."""
    from tiltflow.workflow.sets import TiltSeriesSet

    empty = [k for k in _READ if k in run.params and run.params[k] is None]
    main = next((o for o in outputs if o.type in ("TiltSeriesM", "TiltSeries")), None)
    if not empty or main is None:
        return {}
    value = store.load(main)
    if not isinstance(value, TiltSeriesSet) or not value.items:
        return {}
    source = {"import-movies": "the mdoc", "import-tilt-series": "the files"}.get(run.step, "the input")
    read = {}
    for key in empty:
        found = sorted({getattr(ts.acquisition, key) for ts in value.items} - {None})
        if found:
            read[key] = f"{', '.join(f'{v:g}' for v in found)} (from {source})"
    return read


def _span(values: list[float], unit: str, fmt: str = ".2f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}} {unit}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}} {unit}"


def _output_json(store, o) -> dict:
    """An output for ``--json``: its record, the set's typed fields (odd_even, gain_file...) and items."""
    value = store.load(o)
    fields = {k: v for k, v in vars(value).items() if k not in ("kind", "items", "attrs")}
    return {
        "name": o.name,
        "pointer": o.pointer,
        "type": o.type,
        "summary": o.summary,
        "attrs": o.attrs,
        **fields,
        "items": value.items,
    }


def quality_line(store, run, outputs) -> str:
    """One line on a run's results: motion (median, max), defocus range and CTF verdicts, alignment
    residual and verdicts — what its first output of each kind carries ('' when nothing applies)."""
    import statistics

    from tiltflow.workflow.sets import alignment_verdict, ctf_verdict, verdict_summary

    parts = []
    first: dict[str, Any] = {}
    for o in outputs:
        first.setdefault(o.type, o)
    ts_out = first.get("TiltSeries")
    if ts_out is not None and run.step == "motion-ctf":
        motion = [
            im.total_motion_px for ts in store.load(ts_out).items for im in ts.images if im.total_motion_px is not None
        ]
        if motion:
            parts.append(f"motion {statistics.median(motion):.2f} px median (max {max(motion):.2f} px)")
    if "CTFTomoSeries" in first:
        series = [s for s in store.load(first["CTFTomoSeries"]).items if s.enabled]
        defocus = [c.defocus_mean_a / 1e4 for s in series for c in s.items if c.enabled]
        if defocus:
            verdicts = verdict_summary("CTF", {s.ts_id: ctf_verdict(s)["status"] for s in series})
            parts.append(f"defocus {_span(defocus, 'µm')}{verdicts}")
    if ts_out is not None and run.step in ("align", "import-alignment"):
        series = [ts for ts in store.load(ts_out).items if ts.enabled]
        residual = [
            ts.alignment["mean_residual_px"]
            for ts in series
            if ts.alignment and ts.alignment.get("mean_residual_px") is not None
        ]
        errors = [
            statistics.fmean(e)
            for ts in series
            if (e := [im.projection_matching_error for im in ts.images if im.projection_matching_error is not None])
        ]
        verdicts = verdict_summary("aligned", {ts.ts_id: alignment_verdict(ts)["status"] for ts in series})
        if residual:
            parts.append(f"residual {_span(residual, 'px')}{verdicts}")
        elif errors:
            parts.append(f"projection-matching error {_span(errors, '(1 - NCC)', '.3f')}{verdicts}")
        elif verdicts:
            parts.append(verdicts[2:])
    return "; ".join(parts)
