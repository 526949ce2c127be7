"""Step ``import-alignment``: a fiducial alignment of a simulated series, exported for IMOD and
AreTomo and imported back, gives the same geometry (and tomogram); the exported ``.fid`` holds the
beads where the simulator put them (read by the ``imodmodel`` package); bad files give one-line
errors naming the file; the corpus ``.aln`` imports as its companion ``.xf``/``.tlt`` say."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tiltflow.cli.main import build_cli
from tiltflow.core.align.residuals import alignment_residual_against_truth
from tiltflow.core.alignment_convert import xf_point_difference_px
from tiltflow.core.transforms import xf_to_geometry
from tiltflow.io.mrc import read_stack, write_mrc
from tiltflow.testing.acquisition import plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import render_truth_tilt
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.export import export_set
from tiltflow.workflow.runner import run_step
from tiltflow.workflow.store import ProjectStore

REPO = Path(__file__).resolve().parents[1]
SIZE = 512


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """15 views of a simulated noisy series; the last view excluded, then aligned with beads."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("import_alignment")
    config = DemoConfig(n_series=1, n_tilts=15, size=(SIZE, SIZE), seed=21, tilt_step_deg=4.0)
    series = plan_series(config, 0, np.random.default_rng(21))
    order = sorted(range(15), key=lambda i: series["tilts"][i]["mdoc_tilt_angle_deg"])
    rng = np.random.default_rng(0)
    views = [
        rng.poisson(np.clip(render_truth_tilt(series, i).numpy() * config.n_frames, 0, None)).astype(np.float32)
        for i in order
    ]
    write_mrc(root / "stacks" / "TS_01.st", np.stack(views), voxel_size_a=series["pixel_size_a"])
    (root / "stacks" / "TS_01.rawtlt").write_text(
        "".join(f"{series['tilts'][i]['mdoc_tilt_angle_deg']:.4f}\n" for i in order)
    )
    truth = torch.tensor(
        [[series["tilts"][i]["bead_projections_px"][b] for i in order] for b in range(len(series["bead_xyz_px"]))],
        dtype=torch.float64,
    )
    seen = torch.tensor(
        [[series["tilts"][i]["bead_in_image"][b] for i in order] for b in range(len(series["bead_xyz_px"]))]
    )
    truth[~seen] = float("nan")
    store = ProjectStore(root / "p")
    imp = run_step(
        store,
        "import-tilt-series",
        {
            "files": str(root / "stacks"),
            "pattern": "{TS}.st",
            "voltage_kv": 300,
            "dose_per_tilt_e_a2": 3.0,
            "tilt_axis_deg": series["mdoc_tilt_axis_deg"],
        },
    )
    subset = store.load(store.resolve(str(imp.id)))
    subset.items[0].images[-1].enabled = False
    store.add_output(imp.id, "TiltSeries_2", subset)
    align = run_step(store, "align", {"method": "fiducial", "binning": 2}, {"input": f"{imp.id}.TiltSeries_2"})
    for fmt in ("imod", "aretomo"):
        export_set(store, str(align.id), fmt, root / fmt)
    return store, root, imp, align, truth


def _geometry(ts):
    xf = torch.tensor([im.transform if im.enabled else [1.0, 0, 0, 1, 0, 0] for im in ts.images], dtype=torch.float64)
    angles = torch.tensor([im.best_tilt_angle_deg for im in ts.images], dtype=torch.float64)
    return xf, angles, [im.enabled for im in ts.images]


@pytest.mark.parametrize("fmt, pattern", [("imod", "{TS}/{TS}.xf"), ("aretomo", "{TS}/{TS}.aln")])
def test_exported_alignment_imports_back_identically(project, fmt, pattern):
    store, root, imp, align, truth = project
    # onto the unexcluded set: the excluded view comes back from tilt.com's EXCLUDELIST / the .aln dark frame
    run = run_step(store, "import-alignment", {"files": str(root / fmt), "pattern": pattern}, {"input": str(imp.id)})
    ours = store.load(store.resolve(str(align.id))).items[0]
    back = store.load(store.resolve(str(run.id))).items[0]
    xf_a, ang_a, on_a = _geometry(ours)
    xf_b, ang_b, on_b = _geometry(back)
    assert on_b == on_a == [True] * 14 + [False]
    keep = torch.tensor(on_a)
    moved = xf_point_difference_px(xf_a[keep], xf_b[keep], (SIZE, SIZE)).max().item()
    assert moved < 1e-3, moved  # imod: .xf prints DX, DY to 3 decimals
    assert (ang_a[keep] - ang_b[keep]).abs().max().item() < 1e-3
    assert abs(back.acquisition.tilt_axis_deg - ours.acquisition.tilt_axis_deg) < 1e-3
    assert back.alignment["format"] == fmt
    # the honest residual against the simulator's beads is the same alignment's
    r_a = alignment_residual_against_truth(xf_a[keep], ang_a[keep], truth[:, keep], (SIZE, SIZE))
    r_b = alignment_residual_against_truth(xf_b[keep], ang_b[keep], truth[:, keep], (SIZE, SIZE))
    assert abs(r_a - r_b) < 1e-3 and r_b < 1.0, (r_a, r_b)
    # reconstruct uses the imported set directly and gives the same tomogram
    params = {"binning": 8, "thickness_nm": 120.0}
    vols = []
    for pointer in (str(align.id), str(run.id)):
        rec = run_step(store, "reconstruct", params, {"input": pointer})
        vols.append(read_stack(store.load(store.resolve(str(rec.id))).items[0].file).astype(np.float64))
    assert vols[0].shape == vols[1].shape
    corr = np.corrcoef(vols[0].ravel(), vols[1].ravel())[0, 1]
    assert corr > 0.9999, corr


def test_exported_fiducial_model_holds_the_true_beads(project):
    imodmodel = pytest.importorskip("imodmodel")
    from tiltflow.io.imod import read_mod

    _store, root, _imp, _align, truth = project
    fid = root / "imod" / "TS_01" / "TS_01.fid"
    df = imodmodel.read(fid)
    ours = read_mod(fid)
    assert len(df) == sum(len(c.points) for c in ours.objects[0].contours)
    assert df["contour_id"].nunique() == len(ours.objects[0].contours) >= 5
    # z is the section of the exported stack (15 views); the view excluded before aligning has no points
    assert set(df["z"].round().astype(int)) <= set(range(14))
    dist = []
    for x, y, z in df[["x", "y", "z"]].to_numpy():
        true = truth[:, round(z)]
        d = (true - torch.tensor([x, y], dtype=torch.float64)).norm(dim=-1)
        dist.append(torch.nan_to_num(d, nan=1e9).min().item())
    dist = np.array(dist)
    assert np.median(dist) < 1.0 and np.quantile(dist, 0.9) < 2.0, (np.median(dist), dist.max())


def test_exported_relion_from_tomograms_lists_them(project, tmp_path):
    import mrcfile
    import starfile

    store, _root, _imp, align, _truth = project
    rec = run_step(store, "reconstruct", {"binning": 8, "thickness_nm": 120.0}, {"input": str(align.id)})
    out = tmp_path / "relion"
    export_set(store, str(rec.id), "relion", out)
    row = starfile.read(out / "tomograms.star").iloc[0]
    tomo = out / row["rlnTomoReconstructedTomogram"]
    with open(os.devnull, "w") as sink:
        assert mrcfile.validate(str(tomo), print_file=sink)
    with mrcfile.open(tomo, header_only=True) as mrc:
        nz = int(mrc.header.nz)
    assert row["rlnTomoTomogramBinning"] == 8 and row["rlnTomoSizeZ"] == nz * 8
    assert (row["rlnTomoSizeX"], row["rlnTomoSizeY"]) == (SIZE, SIZE)
    assert len(starfile.read(out / row["rlnTomoTiltSeriesStarFile"])) == 14


# ---- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS_01.st", np.zeros((5, 16, 16), np.float32), voxel_size_a=2.0)
    (folder / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    store = ProjectStore(tmp_path / "p")
    run_step(
        store,
        "import-tilt-series",
        {"files": str(folder), "pattern": "{TS}.st", "voltage_kv": 300, "tilt_axis_deg": 85.0},
    )
    return store, tmp_path / "align"


def _cli(store, files, pattern):
    return CliRunner().invoke(
        build_cli(),
        ["import-alignment", "-p", str(store.root), "--input", "1", "--files", str(files), "--pattern", pattern],
    )


XF_ROW = "   0.0871557   0.9961947  -0.9961947   0.0871557       1.500      -2.000\n"


def test_missing_series_names_the_pattern(small):
    store, d = small
    d.mkdir()
    (d / "TS_02.xf").write_text(XF_ROW * 5)
    result = _cli(store, d, "{TS}.xf")
    assert result.exit_code == 2
    assert "TS_01: no file in" in result.output and "'{TS}.xf'" in result.output


def test_wrong_view_count_names_the_file(small):
    store, d = small
    d.mkdir()
    (d / "TS_01.xf").write_text(XF_ROW * 4)
    result = _cli(store, d, "{TS}.xf")
    assert result.exit_code == 2
    assert "TS_01.xf: 4 views, but TS_01 has 5 views (5 enabled)" in result.output


def test_unparsable_line_names_file_and_line(small):
    store, d = small
    d.mkdir()
    (d / "TS_01.xf").write_text(XF_ROW * 2 + "   1.0 0.0 0.0 1.0 abc 0.0\n" + XF_ROW * 2)
    with pytest.raises(InputError, match=r"TS_01\.xf:3: not a list of numbers"):
        run_step(store, "import-alignment", {"files": str(d), "pattern": "{TS}.xf"}, {"input": "1"})
    (d / "TS_01.xf").write_text(XF_ROW * 5)
    (d / "TS_01.tlt").write_text("-6\n-3\n0\n3\n")
    with pytest.raises(InputError, match=r"TS_01\.tlt: 4 tilt angles for 5 views"):
        run_step(store, "import-alignment", {"files": str(d), "pattern": "{TS}.xf"}, {"input": "1"})
    (d / "TS_01.tlt").write_text("6\n3\n0\n-3\n-6\n")  # a stack in the other order
    with pytest.raises(InputError, match="another order"):
        run_step(store, "import-alignment", {"files": str(d), "pattern": "{TS}.xf"}, {"input": "1"})


def test_xf_binning_scales_shifts_and_keeps_set_angles_without_tlt(small):
    store, d = small
    d.mkdir()
    (d / "TS_01.xf").write_text(XF_ROW * 5)
    run = run_step(store, "import-alignment", {"files": str(d), "pattern": "{TS}.xf", "binning": 2.0}, {"input": "1"})
    ts = store.load(store.resolve(str(run.id))).items[0]
    assert ts.images[0].transform[4:] == pytest.approx([3.0, -4.0])
    assert ts.images[0].refined_tilt_angle_deg is None
    assert ts.acquisition.tilt_axis_deg == pytest.approx(85.0, abs=1e-5)


# ---- real files ----------------------------------------------------------------------------------


@pytest.fixture
def aln_dir() -> Path:
    path = Path(os.environ.get("TILTFLOW_CORPUS", REPO / ".." / "shared" / "corpus")) / "aretomo"
    if not path.is_dir():
        pytest.skip("shared corpus not available")
    return path


def test_corpus_aln_imports_as_its_companion_xf_says(aln_dir, tmp_path):
    """alnfile_global_no_local.aln (4096² stack, 61 views) onto a 128² set: shifts scaled by 1/32,
    the raw shifts of its companion .xf, the opposite rotation (that .xf was written with
    A = R(+ROT)), and the angles of its .tlt."""
    from tiltflow.io.imod import read_tlt, read_xf

    angles = read_tlt(aln_dir / "alnfile_global_no_local.tlt")
    folder = tmp_path / "stacks"
    write_mrc(folder / "TS.st", np.zeros((61, 128, 128), np.float32), voxel_size_a=1.0)
    (folder / "TS.rawtlt").write_text("".join(f"{a:.2f}\n" for a in angles.tolist()))
    store = ProjectStore(tmp_path / "p")
    run_step(store, "import-tilt-series", {"files": str(folder), "pattern": "{TS}.st", "voltage_kv": 300})
    (tmp_path / "aln").mkdir()
    shutil.copyfile(aln_dir / "alnfile_global_no_local.aln", tmp_path / "aln" / "TS.aln")
    run = run_step(store, "import-alignment", {"files": str(tmp_path / "aln"), "pattern": "{TS}.aln"}, {"input": "1"})
    ts = store.load(store.resolve(str(run.id))).items[0]
    ours = xf_to_geometry(torch.tensor([im.transform for im in ts.images], dtype=torch.float64))
    corpus = xf_to_geometry(read_xf(aln_dir / "alnfile_global_no_local.xf"))
    assert (ours.shifts_px - corpus.shifts_px / 32).abs().max() < 1e-5
    assert (ours.tilt_axis_deg + corpus.tilt_axis_deg).abs().max() < 1e-5
    refined = torch.tensor([im.refined_tilt_angle_deg for im in ts.images], dtype=torch.float64)
    assert (refined - angles).abs().max() < 1e-9 and all(im.enabled for im in ts.images)


def test_corpus_truncated_aln_is_refused_naming_it(aln_dir, tmp_path):
    folder = tmp_path / "stacks"
    write_mrc(folder / "cryoet-alignment_test.st", np.zeros((90, 16, 16), np.float32), voxel_size_a=1.0)
    (folder / "cryoet-alignment_test.rawtlt").write_text("".join(f"{-66 + 1.5 * i}\n" for i in range(90)))
    store = ProjectStore(tmp_path / "p")
    run_step(store, "import-tilt-series", {"files": str(folder), "pattern": "{TS}.st", "voltage_kv": 300})
    with pytest.raises(InputError, match=r"cryoet-alignment_test\.aln: 4 global rows \+ 4 dark frames != RawSize 90"):
        run_step(store, "import-alignment", {"files": str(aln_dir), "pattern": "{TS}.aln"}, {"input": "1"})
