"""What a project shows through tiltflow, as JSON: its sets, `show`, the viewer's data layer and
exports. Run by ``test_store_migration.py`` with the version-1 code (a subprocess) and with
today's code, on the same project folder before and after its migration; the two must agree.

Imports only modules both versions have. Typed set fields (today's code) are folded back into
``attrs`` under their version-1 keys, so the values compare one to one.

    python tests/store_migration_probe.py build BASE      # a demo project in BASE/proj
    python tests/store_migration_probe.py probe ROOT OUT  # ROOT's view as JSON in OUT
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

# typed field -> its version-1 attrs key, per dataclass
MOVED = {
    "TiltImage": {
        k: k
        for k in (
            "movie",
            "total_motion_px",
            "defocus_u_a",
            "defocus_v_a",
            "refined_tilt_angle_deg",
            "residual_px",
            "projection_matching_error",
        )
    },
    "TiltSeries": {"alignment": "alignment", "motion_star_dir": "motion_star_dir"},
    "TiltSeriesSet": {"odd_even": "odd_even", "gain_file": "gain_file", "dark_file": "dark_file"},
    "CtfTomo": {"spectrum_file": "spectrum_file", "ring_strength": "ring_strength"},
    "CtfTomoSeries": {"verdict": "ctf_verdict", "ctffind_file": "ctffind", "defocus_file": "defocus"},
    "Tomogram": {k: k for k in ("method", "binning", "source", "ctf", "odd_file", "even_file")},
}
FAST = {"window_px": 64, "ctf_range_a": [30, 8], "motion_grid": [1, 1, 1], "even_odd": True}


def as_v1(value):
    """Plain JSON-able data; a dataclass's typed fields in its ``attrs`` (absent: None or False)."""
    if dataclasses.is_dataclass(value):
        moved = MOVED.get(type(value).__name__, {})
        attrs = dict(getattr(value, "attrs", None) or {})
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name in moved:
                attrs[moved[f.name]] = v
            elif f.name != "attrs":
                out[f.name] = as_v1(v)
        for key in moved.values():
            if attrs.get(key) in (None, False):
                attrs.pop(key, None)
        if hasattr(value, "attrs"):
            out["attrs"] = as_v1(attrs)
        return out
    if isinstance(value, (list, tuple)):
        return [as_v1(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_v1(v) for k, v in value.items()}
    return value


def build(base: Path) -> None:
    """import-movies -> motion-ctf (odd/even) -> align (fiducial) -> reconstruct (halves, phase flip)."""
    from tiltflow.testing.config import DemoConfig
    from tiltflow.testing.demo import write_demo_dataset
    from tiltflow.workflow.runner import run_step
    from tiltflow.workflow.store import ProjectStore

    raw = base / "raw"
    write_demo_dataset(
        raw,
        DemoConfig(n_series=1, n_tilts=9, size=(192, 192), n_frames=3, seed=5, n_beads=10, bead_diameter_nm=5.0),
        force=True,
    )
    store = ProjectStore(base / "proj")
    imp = run_step(store, "import-movies", {"files": str(raw), "pattern": "*.mdoc", "gain": str(raw / "gain_ref.gain")})
    mc = run_step(store, "motion-ctf", FAST, {"input": str(imp.id)})
    al = run_step(
        store, "align", {"method": "fiducial", "binning": 1, "bead_diameter_nm": 5.0}, {"input": f"{mc.id}.TiltSeries"}
    )
    rec = run_step(
        store,
        "reconstruct",
        {"binning": 2, "even_odd": True, "ctf_correct": "phaseflip"},
        {"input": f"{al.id}.TiltSeries", "ctf": f"{mc.id}.CTFTomoSeries"},
    )
    assert [r.status for r in (imp, mc, al, rec)] == ["finished"] * 4


def _cli(*args) -> str:
    from click.testing import CliRunner

    from tiltflow.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _viewer(store) -> dict:
    from tiltflow.web import project_data as pd
    from tiltflow.web.ctf_source import find_ctf_source
    from tiltflow.web.tomograms import tomogram_infos

    out: dict = {"project": pd.project_info(store).model_dump()}
    for o in store.outputs():
        value = store.load(o)
        if o.type in ("TiltSeries", "TiltSeriesM"):
            ctf = find_ctf_source(store, o)
            sums = pd.motion_corrected(store, o)
            out[o.pointer] = {
                "series": [s.model_dump() for s in pd.series_infos(value, ctf)],
                "views": {
                    ts.ts_id: [v.model_dump() for v in pd.view_infos(ts, ctf, pd.shown_images(store, sums, ts))]
                    for ts in value.items
                },
            }
        elif o.type == "CTFTomoSeries":
            out[o.pointer] = {
                s.ts_id: {
                    "detail": pd.ctf_detail(
                        s, pd.find_acquisition(store, o, s.ts_id), s.attrs.get("spectrum_pixel_size_a")
                    ).model_dump(),
                    "spectra": [str(pd.spectrum_file(store, s, c.acquisition_order)) for c in s.items],
                }
                for s in value.items
            }
        elif o.type == "Tomograms":
            out[o.pointer] = [t.model_dump() for t in tomogram_infos(store, value)]
    return out


def _exports(root: Path, runs: list) -> dict:
    """imod of the tomograms, relion of the aligned set, warp of the motion-corrected set: text files
    as text, MRC files by a digest of their data (headers carry a date)."""
    import mrcfile

    jobs = [(runs[-1].id, "imod"), (f"{runs[2].id}.TiltSeries", "relion"), (f"{runs[1].id}.TiltSeries", "warp")]
    out = {}
    for pointer, fmt in jobs:
        folder = root.parent / "export" / fmt
        shutil.rmtree(folder, ignore_errors=True)
        _cli("export", pointer, "-p", root, "--format", fmt, "--out", folder)
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = str(path.relative_to(folder))
            if path.suffix in (".mrc", ".st", ".mrcs", ".ali", ".rec"):
                with mrcfile.open(path, permissive=True) as mrc:
                    files[rel] = hashlib.sha256(mrc.data.tobytes()).hexdigest()
            elif path.suffix in (".png", ".tif", ".tiff"):
                files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                files[rel] = path.read_text(errors="replace")
        out[f"{pointer} {fmt}"] = files
    return out


def probe(root: Path) -> dict:
    from tiltflow.workflow.store import ProjectStore

    store = ProjectStore(root, create=False)
    runs = store.runs()
    sets = {o.pointer: {"summary": o.summary, "value": as_v1(store.load(o))} for o in store.outputs()}
    show = {"": _cli("show", "-p", root), **{str(r.id): _cli("show", "-p", root, r.id) for r in runs}}
    return {
        "sets": sets,
        "show": show,
        "viewer": json.loads(json.dumps(_viewer(store), default=str)),
        "exports": _exports(root, runs),
    }


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        Path(sys.argv[3]).write_text(json.dumps(probe(Path(sys.argv[2])), indent=1, default=str))
