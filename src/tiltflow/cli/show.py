"""``tiltflow show [ID]``: runs, outputs and summaries; ``--json`` down to every tilt image."""

from __future__ import annotations

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
    from tiltflow.workflow.run_liveness import with_hint
    from tiltflow.workflow.store import ProjectStore

    try:
        store = ProjectStore(project, create=False)
        if run_id is None:
            runs = store.runs()
            outputs = store.outputs()
            if as_json:
                echo_json({"project": str(store.root), "runs": [
                    {**r.to_dict(), "outputs": [{"name": o.name, "pointer": o.pointer, "type": o.type,
                                                 "summary": o.summary} for o in outputs if o.run_id == r.id]}
                    for r in runs]})
                return
            if not runs:
                console.print(f"{store.root}: no runs yet", markup=False)
            for r in runs:
                console.print(f"{r.id:>3}  {r.step:<20} {r.status:<10} {_duration(r):>8}  {r.label or ''}", markup=False)
                if r.status == "interrupted":
                    console.print(f"       {with_hint(r, store.root)}", markup=False)
                for o in outputs:
                    if o.run_id == r.id:
                        console.print(f"       {o.pointer}: {o.summary}", markup=False)
            return
        head = str(run_id).split(".")[0].strip()
        if not head.isdigit():
            raise ProjectError(f"run '{run_id}': expected a run number such as 1 (or 3.TiltSeries) — "
                               f"`tiltflow show -p {project}` lists the runs")
        rid = int(head)
        run = store.run(rid)
        outs = store.outputs(rid)
        if as_json:
            echo_json({**run.to_dict(), "outputs": [
                {"name": o.name, "pointer": o.pointer, "type": o.type, "summary": o.summary, "attrs": o.attrs,
                 "items": store.load(o).items} for o in outs]})
            return
        console.print(f"run {run.id} {run.step} — {run.status} {_duration(run)}", markup=False)
        if run.status == "interrupted":
            console.print(f"  {with_hint(run, store.root)}", markup=False)
        elif run.error:
            console.print(f"  error: {run.error}", markup=False)
        console.print(f"  folder: {store.root / (run.run_dir or '')}", markup=False)
        console.print("  inputs: " + (", ".join(f"{k}={v}" for k, v in run.inputs.items()) or "none"), markup=False)
        console.print("  parameters:", markup=False)
        for k, v in run.params.items():
            console.print(f"    {k} = {v}", markup=False)
        for o in outs:
            console.print(f"  output {o.pointer}: {o.summary}", markup=False)
            for line in _verdict_lines(store, o):
                console.print(f"    {line}", markup=False)
    except (ProjectError, ValueError) as err:
        fail([str(err)])


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
