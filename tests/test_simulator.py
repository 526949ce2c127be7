"""The demo-data simulator: its truth must be what its pixels and files show."""

import json
import re
from datetime import datetime

import mdocfile
import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage, optimize

from tiltflow.core import geometry
from tiltflow.core.ctf_model import ctf_1d
from tiltflow.core.fourier import shift_image_2d
from tiltflow.testing import detector
from tiltflow.testing.acquisition import dose_symmetric_order, plan_series
from tiltflow.testing.config import DemoConfig
from tiltflow.testing.demo import (
    expected_frames,
    make_detector,
    render_truth_tilt,
    write_demo_dataset,
)
from tiltflow.testing.imaging import (
    ImageCtf,
    ImageExposure,
    TiltView,
    critical_exposure_e_a2,
    defocus_offset_map_a,
    render_tilt_image,
)
from tiltflow.testing.phantom import Specimen


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is shared: one torch thread is several times faster here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**kw) -> DemoConfig:
    base = dict(n_series=1, n_tilts=5, size=(192, 160), n_frames=3, pixel_size_a=5.0, tilt_step_deg=10.0)
    base.update(kw)
    return DemoConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = small_config(n_series=2, xray_hits_per_frame_mpx=60.0)
    return out, cfg, write_demo_dataset(out, cfg)


def fit_shift(a: np.ndarray, b: np.ndarray, border: int = 24) -> np.ndarray:
    """Sub-pixel (x, y) d with shift(a, d) = b, least squares on the centre (noise-free input)."""
    ta = torch.from_numpy(a).double()
    core = (slice(border, -border), slice(border, -border))

    def residual(d):
        moved = shift_image_2d(ta, torch.tensor(d, dtype=torch.float64)).numpy()
        return (moved - b)[core].ravel()

    # start from the integer peak of the cross-correlation
    cc = np.fft.ifft2(np.fft.fft2(b - b.mean()) * np.conj(np.fft.fft2(a - a.mean()))).real
    iy, ix = np.unravel_index(np.argmax(cc), cc.shape)
    x0 = [(ix + a.shape[1] // 2) % a.shape[1] - a.shape[1] // 2, (iy + a.shape[0] // 2) % a.shape[0] - a.shape[0] // 2]
    return optimize.least_squares(residual, x0=np.array(x0, dtype=float), jac="3-point", diff_step=1e-3).x


def test_dose_symmetric_order_hagen_groups_and_plain():
    assert dose_symmetric_order(7, 3.0, 2) == [0, 3, -3, -6, 6, 9, -9]
    assert dose_symmetric_order(7, 3.0, 1) == [0, 3, -3, 6, -6, 9, -9]
    assert sorted(dose_symmetric_order(4, 2.0, 2)) == [-2, 0, 2, 4]


def test_doses_accumulate_in_acquisition_order(dataset):
    out, cfg, truth = dataset
    for series in truth["series"]:
        tilts = series["tilts"]
        assert [t["acquisition_order"] for t in tilts] == list(range(cfg.n_tilts))
        prior = np.cumsum([0.0] + [t["dose_e_a2"] for t in tilts])[:-1]
        np.testing.assert_allclose([t["prior_dose_e_a2"] for t in tilts], prior)
        np.testing.assert_allclose([t["accumulated_dose_e_a2"] for t in tilts], prior + cfg.dose_per_tilt_e_a2)
        df = mdocfile.read(out / series["mdoc"])
        np.testing.assert_allclose(df["PriorRecordDose"], prior, atol=1e-4)


def test_bead_truth_projections_are_the_darkest_spots():
    cfg = DemoConfig(n_series=1, n_tilts=11, size=(320, 256))
    series = plan_series(cfg, 0, np.random.default_rng(3))
    radius = series["specimen"]["bead_radius_px"]
    checked, errors = 0, []
    for i in (0, 3, 4, 9, 10):  # 0°, +-6°, then the two highest tilts (+-15°)
        t = series["tilts"][i]
        img = render_truth_tilt(series, i).numpy()
        smooth = ndimage.gaussian_filter(img, radius / 2)
        minima = smooth == ndimage.minimum_filter(smooth, size=int(2 * radius) + 1)
        minima &= smooth < 0.7 * np.median(smooth)
        pred = np.array(t["bead_projections_px"])
        yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
        for k, (px, py) in enumerate(pred):
            others = np.delete(pred, k, axis=0)
            edge = min(px, py, img.shape[1] - 1 - px, img.shape[0] - 1 - py)
            if edge < 2.5 * radius or np.hypot(*(others - [px, py]).T).min() < 4 * radius:
                continue
            ys, xs = np.nonzero(minima & (np.hypot(xx - px, yy - py) < radius))
            assert len(xs) == 1, f"tilt {i}: bead {k} has {len(xs)} dark minima near its truth"
            r = np.hypot(xx - xs[0], yy - ys[0])
            background = np.median(img[(r > 1.5 * radius) & (r < 2.5 * radius)])
            w = np.clip(background - img, 0, None) * (r < 1.2 * radius)
            centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
            errors.append(np.hypot(*(centroid - [px, py])))
            checked += 1
    assert checked >= 8
    assert max(errors) < 1.0, errors


def test_projection_convention_independent_of_project_points():
    # axis 90°: aligned +x' lies along raw +y; tilt 30°: x' = x cos + z sin
    spec = Specimen(
        bead_xyz_px=torch.tensor([[30.0, 0.0, 60.0]], dtype=torch.float64),
        bead_radius_px=6.0,
        vesicle_xyz_px=torch.zeros(0, 3),
        vesicle_radius_px=torch.zeros(0),
        blob_xyz_px=torch.zeros(0, 3),
        blob_sigma_px=torch.zeros(0),
        ice_thickness_px=200.0,
        pixel_size_a=4.0,
    )
    img = render_tilt_image(
        spec,
        TiltView(tilt_angle_deg=30.0, tilt_axis_deg=90.0, image_shape=(160, 128), shift_px=(3.0, -5.0)),
        ImageCtf(defocus_u_a=5000.0, defocus_v_a=5000.0),
    ).numpy()
    xprime = 30 * np.cos(np.radians(30)) + 60 * np.sin(np.radians(30))
    expected = np.array([63.5 + 3.0 - 0.0, 79.5 - 5.0 + xprime])  # R(90) (x', 0) = (0, x')
    w = np.clip(np.median(img) - img, 0, None)
    w[w < 0.3 * w.max()] = 0
    yy, xx = np.mgrid[:160, :128]
    centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
    assert np.hypot(*(centroid - expected)) < 0.5


def test_frame_shifts_are_what_the_frames_show():
    cfg = small_config(local_motion=False, motion_total_px=(2.5, 3.0), ice_texture_rad=0.0)
    series = plan_series(cfg, 0, np.random.default_rng(1))
    frames = expected_frames(series, 2).double().numpy()
    s = np.array(series["tilts"][2]["frame_shifts_px"])
    np.testing.assert_allclose(s.mean(axis=0), 0.0, atol=1e-12)
    measured = fit_shift(frames[0], frames[-1])
    err = np.abs(measured - (s[-1] - s[0]))
    assert err.max() < 0.05, (measured, s[-1] - s[0])
    assert np.hypot(*(s[-1] - s[0])) > 1.0  # the check is not trivially small
    # each frame is the tilt image moved by its shift; shifts are mean zero, so the tilt image
    # has the frame-average geometry
    tilt = render_truth_tilt(series, 2).double().numpy()
    for f in range(cfg.n_frames):
        assert np.abs(fit_shift(tilt, frames[f]) - s[f]).max() < 0.02


def _dark_centroid(img: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Darkness-weighted centroid (x, y) within ``radius`` of ``centre``."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    r = np.hypot(xx - centre[0], yy - centre[1])
    w = np.clip(np.median(img) - img, 0, None) * (r < radius)
    return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()


def test_local_motion_moves_beads_as_truth_says():
    """A bead at p in the tilt image lies at p + shift + local(p) in the frame."""
    cfg = small_config(
        local_motion=True, local_motion_px=3.0, ice_texture_rad=0.0, size=(256, 256), n_frames=2, pixel_size_a=4.0
    )
    checked, errors = 0, []
    for seed in (2, 3, 4):
        series = plan_series(cfg, 0, np.random.default_rng(seed))
        t = series["tilts"][0]
        nx, ny = series["image_size"]
        tilt = render_truth_tilt(series, 0).double().numpy()
        frames = expected_frames(series, 0).double().numpy()
        radius = 1.6 * series["specimen"]["bead_radius_px"]
        coeff = torch.tensor(t["local_motion"]["coefficients_px"])
        for p in np.array(t["bead_projections_px"]):
            if min(p[0], p[1], nx - 1 - p[0], ny - 1 - p[1]) < 2 * radius:
                continue
            base = _dark_centroid(tilt, p, radius)
            for f in range(cfg.n_frames):
                d = detector.local_displacement_px(
                    torch.tensor(p),
                    coefficients_px=coeff,
                    image_shape=(ny, nx),
                    frame_weight=t["local_motion"]["frame_weights"][f],
                ).numpy()
                move = np.array(t["frame_shifts_px"][f]) + d
                moved = _dark_centroid(frames[f], p + move, radius)
                errors.append(np.abs((moved - base) - move).max())
                checked += np.hypot(*d) > 0.3
    assert checked >= 4
    assert max(errors) < 0.04, errors


def test_gain_corrected_mean_is_flat():
    rng = np.random.default_rng(0)
    gain = detector.make_gain((128, 128), rng)
    assert 0.75 < gain.min() and gain.max() < 1.25
    expected = np.full((128, 128), 30.0)
    raw = np.mean(
        [detector.count_frame(expected, gain, rng, frame_index=0, hot_pixels=[], xray_hits=[]) for _ in range(40)],
        axis=0,
    )
    block = lambda a: a.reshape(16, 8, 16, 8).mean(axis=(1, 3))  # noqa: E731
    corrected = block(raw * gain)
    assert np.abs(corrected / 30.0 - 1).max() < 0.02  # flat within Poisson error (~0.6 %)
    assert np.corrcoef(block(raw).ravel(), block(1 / gain).ravel())[0, 1] > 0.95


def test_defocus_offset_map_is_geometry_defocus_offset():
    kw = dict(tilt_angle_deg=40.0, tilt_axis_deg=85.0, pixel_size_a=2.0)
    m = 8
    amap = defocus_offset_map_a((80 + 2 * m, 96 + 2 * m), margin_px=m, image_shape=(80, 96), **kw)
    pts = torch.tensor([[0.0, 0.0], [95.0, 79.0], [17.0, 60.0]], dtype=torch.float64)
    want = geometry.defocus_offset_a(pts, image_shape=(80, 96), **kw)
    got = torch.stack([amap[int(y) + m, int(x) + m] for x, y in pts.tolist()])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=0.05)


def _fit_defocus(tile_stack: np.ndarray, pixel_size_a: float, candidates: np.ndarray) -> float:
    """Defocus whose CTF² best matches the background-subtracted radial power spectrum."""
    n = tile_stack.shape[-1]
    ps = np.mean([np.abs(np.fft.fft2(t - t.mean())) ** 2 for t in tile_stack], 0)
    ky, kx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    r = np.round(np.hypot(kx, ky) * n).astype(int)
    radial = (np.bincount(r.ravel(), ps.ravel()) / np.bincount(r.ravel()))[: n // 2]
    k = torch.arange(n // 2, dtype=torch.float64) / n / pixel_size_a
    sl = slice(6, n // 2 - 2)
    flat = radial[sl] - ndimage.uniform_filter1d(radial[sl], 7)
    scores = []
    for df in candidates:
        c2 = ctf_1d(k, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.07, defocus_a=df) ** 2
        c2 = c2.numpy()
        scores.append(np.corrcoef(flat, c2[sl] - ndimage.uniform_filter1d(c2[sl], 7))[0, 1])
    return float(candidates[int(np.argmax(scores))])


def test_defocus_gradient_sign_in_rendered_power_spectra():
    """Tilt axis along +y, tilt +40°: the right half (x' > 0) is further underfocus."""
    px, df = 2.0, 15000.0
    spec = Specimen(
        torch.zeros(0, 3), 5.0, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3), torch.zeros(0), 500.0, px
    )
    img = render_tilt_image(
        spec,
        TiltView(tilt_angle_deg=40.0, tilt_axis_deg=0.0, image_shape=(256, 512)),
        ImageCtf(defocus_u_a=df, defocus_v_a=df),
        ImageExposure(ice_texture_rad=0.2),
    ).numpy()
    candidates = np.arange(12000.0, 18001.0, 50.0)
    found = {}
    for side, x0 in (("left", 0), ("right", 384)):  # 128-px columns centred at x = 64 and 448
        tiles = [img[y : y + 64, x0 + x : x0 + x + 64] for y in range(0, 193, 32) for x in range(0, 65, 32)]
        found[side] = _fit_defocus(np.array(tiles), px, candidates)
    want = {s: df + (x - 255.5) * np.tan(np.radians(40)) * px for s, x in (("left", 63.5), ("right", 447.5))}
    assert found["right"] > found["left"]
    for s in found:
        assert abs(found[s] - want[s]) < 150, (found, want)


def test_critical_exposure_known_values():
    k = torch.tensor([0.1, 0.25])
    ne = critical_exposure_e_a2(k, voltage_kv=300)
    np.testing.assert_allclose(ne.numpy(), 0.245 * k.numpy() ** -1.665 + 2.81, rtol=1e-6)
    assert ne[0] > ne[1]
    np.testing.assert_allclose(critical_exposure_e_a2(k, voltage_kv=200).numpy(), 0.8 * ne.numpy(), rtol=1e-6)


def test_xf_rows_align_bead_projections(dataset):
    _, _, truth = dataset
    s = truth["series"][0]
    nx, ny = s["image_size"]
    xyz = torch.tensor(s["bead_xyz_px"], dtype=torch.float64)
    for stack_index, acq in enumerate(s["tilt_order_by_angle"]):
        t = s["tilts"][acq]
        a11, a12, a21, a22, dx, dy = s["xf_rows"][stack_index]
        raw = np.array(t["bead_projections_px"]) - [(nx - 1) / 2, (ny - 1) / 2]
        aligned = raw @ np.array([[a11, a12], [a21, a22]]).T + [dx, dy]
        tilted = geometry.tilt_points(xyz, torch.tensor([t["true_tilt_angle_deg"]]))[0, :, :2]
        np.testing.assert_allclose(aligned, tilted.numpy(), atol=1e-6)


def test_mdoc_serialem_fields(dataset):
    out, cfg, truth = dataset
    s = truth["series"][0]
    text = (out / s["mdoc"]).read_text()
    assert "[T = Tilt axis angle = 85.0, binning = 1  spot = 7  camera = 0]" in text
    assert re.search(r"\[T = SerialEM: .*\d\d-[A-Z][a-z]{2}-\d\d  \d\d:\d\d:\d\d\]", text)
    df = mdocfile.read(out / s["mdoc"])
    assert list(df["ZValue"]) == list(range(cfg.n_tilts))
    np.testing.assert_allclose(df["TiltAngle"], [t["mdoc_tilt_angle_deg"] for t in s["tilts"]])
    np.testing.assert_allclose(df["ExposureDose"], cfg.dose_per_tilt_e_a2)
    np.testing.assert_allclose(df["PixelSpacing"], cfg.pixel_size_a)
    assert (df["NumSubFrames"] == cfg.n_frames).all() and (df["DividedBy2"] == 0).all()
    np.testing.assert_allclose(df["RotationAngle"], 175.0)
    for key in ("Voltage", "Magnification", "ExposureTime", "DoseRate"):
        assert key in df.columns, key
    paths = [str(p) for p in df["SubFramePath"]]  # mdocfile gives PureWindowsPath
    assert all(p.startswith("X:\\Session\\frames\\") for p in paths)
    names = [p.split("\\")[-1] for p in paths]
    assert names == [t["movie"].split("/")[-1] for t in s["tilts"]]
    times = [datetime.strptime(d, "%d-%b-%y  %H:%M:%S") for d in df["DateTime"]]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    frame_doses = re.findall(r"FrameDosesAndNumber = (\S+) (\d+)", text)
    assert len(frame_doses) == cfg.n_tilts
    assert all(float(d) == cfg.dose_per_tilt_e_a2 / cfg.n_frames and int(n) == cfg.n_frames for d, n in frame_doses)


def _section_keys(text: str) -> set[str]:
    section = text.split("[ZValue = 1]")[1].split("[ZValue = 2]")[0]
    return {line.split(" = ")[0].strip() for line in section.splitlines() if " = " in line}


def test_mdoc_serialem_keys_are_those_of_real_serialem_files(dataset, corpus):
    out, _, truth = dataset
    ours = _section_keys((out / truth["series"][0]["mdoc"]).read_text())
    real = set()
    for name in ("mdoc/aretomo3__L1_ts_001.mrc.mdoc", "cryocat_TS_017/017.mdoc"):
        real |= _section_keys((corpus / name).read_text())
    assert ours - real == {"Voltage"}  # per-section Voltage: asked for; real files keep it global


def test_mdoc_tomo5_fields(tmp_path):
    cfg = small_config(flavour="tomo5", n_tilts=3, tilt_axis_deg=84.23, n_frames=2)
    truth = write_demo_dataset(tmp_path, cfg)
    s = truth["series"][0]
    assert s["tsId"] == "Position_1"
    text = (tmp_path / s["mdoc"]).read_text()
    header = re.search(r"\[T =   TiltAxisAngle = (\S+)  Binning = 1  SpotSize = 7\]", text)
    assert header and abs(-float(header.group(1)) - 90 - 84.23) < 1e-6
    assert re.search(r"\[T = Tomography: .*\d\d-[A-Z][a-z]{2}-\d\d  \d\d:\d\d:\d\d\]", text)
    assert text.count("ChannelName =\n") == 3 and text.count("CameraLength = NaN") == 3
    df = mdocfile.read(tmp_path / s["mdoc"])
    np.testing.assert_allclose(df["RotationAngle"], -84.23)
    times = [datetime.strptime(d, "%y-%b-%d  %H:%M:%S") for d in df["DateTime"]]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    for i, t in enumerate(s["tilts"]):
        name = t["movie"].split("/")[-1]
        m = re.fullmatch(r"Position_1_(\d{3})_(-?\d+\.\d\d)_(\d{8})_(\d{6})_fractions\.tiff", name)
        assert m and int(m.group(1)) == i + 1
        assert float(m.group(2)) == t["nominal_tilt_angle_deg"]
        assert (tmp_path / t["movie"]).is_file()


def test_movies_gain_and_truth_files(dataset):
    out, cfg, truth = dataset
    nx, ny = cfg.size
    assert json.loads((out / "truth.json").read_text()) == truth
    gain = tifffile.imread(out / "gain_ref.gain")
    assert gain.dtype == np.float32 and gain.shape == (ny, nx)
    for s in truth["series"]:
        for t in s["tilts"]:
            with tifffile.TiffFile(out / t["movie"]) as tif:
                assert len(tif.pages) == cfg.n_frames
                assert tif.pages[0].compression == tifffile.COMPRESSION.LZW
                movie = tif.asarray()
            assert movie.shape == (cfg.n_frames, ny, nx)
            assert movie.dtype == (np.uint8 if movie.max() <= 255 else np.uint16)
            mean = (movie * gain).mean()
            assert abs(mean / t["mean_counts_per_frame_px"] - 1) < 0.1
    with pytest.raises(FileExistsError, match="force"):
        write_demo_dataset(out, cfg)


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    cfg1 = small_config(n_series=1, n_tilts=2, xray_hits_per_frame_mpx=60.0)
    a = write_demo_dataset(tmp_path / "a", cfg1)
    b = write_demo_dataset(tmp_path / "b", cfg1)
    c = write_demo_dataset(tmp_path / "c", small_config(n_series=1, n_tilts=2, seed=1))
    assert a == b and a != c
    for t in a["series"][0]["tilts"]:
        movie = t["movie"]
        assert (tmp_path / "a" / movie).read_bytes() == (tmp_path / "b" / movie).read_bytes()


def test_xray_hits_and_hot_pixels_are_where_truth_says(dataset):
    out, cfg, truth = dataset
    s = truth["series"][0]
    camera = make_detector(cfg)
    gain = camera["gain"]
    hits = [h for t in s["tilts"] for h in t["xray_hits"]]
    assert len(hits) >= 5
    for acq in range(2):
        t = s["tilts"][acq]
        movie = tifffile.imread(out / t["movie"]).astype(np.int64)
        expected = expected_frames(s, acq).double().numpy() / gain
        excess = movie - expected
        z = excess / np.sqrt(np.maximum(expected, 1.0))
        marked = np.zeros_like(movie, dtype=bool)
        for h in t["xray_hits"]:
            marked[h["frame"], h["y"], h["x"]] = True
            noise_sd = np.sqrt(expected[h["frame"], h["y"], h["x"]] + 1)
            assert excess[h["frame"], h["y"], h["x"]] > h["excess_counts"] - 6 * noise_sd
        for hp in s["hot_pixels"]:
            marked[:, hp["y"], hp["x"]] = True
            assert (excess[:, hp["y"], hp["x"]] > hp["excess_counts_per_frame"] - 30).all()
        assert (z[~marked] < 8).all()  # no bright pixel that truth does not list


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="flavour"):
        DemoConfig(flavour="epu")
    with pytest.raises(ValueError, match="size"):
        DemoConfig(size=(16, 512))
    with pytest.raises(ValueError, match="80"):
        DemoConfig(n_tilts=61, tilt_step_deg=3.0)


# --- scenario extensions (issue 11): additive, defaults unchanged ------------------------------


def _plan(**kw) -> dict:
    cfg = small_config(n_tilts=9, n_frames=12, **kw)
    return plan_series(cfg, 0, np.random.default_rng([cfg.seed, 1, 0]))


def test_extensions_at_their_defaults_change_nothing(tmp_path):
    from tiltflow.testing.config import EXTENSION_DEFAULTS

    assert _plan(**EXTENSION_DEFAULTS) == _plan()
    assert DemoConfig().extension_values() == {}
    truth = write_demo_dataset(tmp_path / "a", small_config(n_tilts=3, n_frames=2))
    assert not set(EXTENSION_DEFAULTS) & set(truth["config"])  # truth.json as it was
    truth = write_demo_dataset(tmp_path / "b", small_config(n_tilts=3, n_frames=2, jitter_px=0.1))
    assert truth["config"]["jitter_px"] == 0.1 and "n_dark_views" not in truth["config"]


def test_exact_tilt_offset_and_axis_error():
    # (the specimen fills the region the true tilts see, so its draw may change with the offset)
    base, s = _plan(), _plan(tilt_offset_deg=4.2, tilt_axis_error_deg=-2.5)
    assert s["tilt_offset_deg"] == 4.2
    assert s["tilt_axis_deg"] == pytest.approx(s["mdoc_tilt_axis_deg"] - 2.5)
    for a, b in zip(base["tilts"], s["tilts"], strict=False):
        assert b["true_tilt_angle_deg"] == pytest.approx(b["mdoc_tilt_angle_deg"] + 4.2)
        assert a["mdoc_tilt_angle_deg"] == b["mdoc_tilt_angle_deg"]
    xyz = torch.tensor(s["bead_xyz_px"], dtype=torch.float64).reshape(-1, 3)
    raw = geometry.project_points(
        xyz,
        tilt_angles_deg=torch.tensor([t["true_tilt_angle_deg"] for t in s["tilts"]]),
        tilt_axis_deg=s["mdoc_tilt_axis_deg"] - 2.5,
        shifts_px=torch.tensor([t["stage_shift_px"] for t in s["tilts"]]),
        image_shape=tuple(s["image_size"][::-1]),
    )
    for i, t in enumerate(s["tilts"]):
        assert np.allclose(np.asarray(t["bead_projections_px"]).reshape(-1, 2), raw[i].numpy())


def test_defocus_drifts_with_tilt_and_astigmatism_drifts_slowly():
    s = _plan(
        defocus_range_um=(3.0, 3.0),
        defocus_jitter_a=0.0,
        defocus_slope_a_per_deg=40.0,
        astigmatism_range_a=(400.0, 400.0),
        astigmatism_drift_a=100.0,
        astigmatism_angle_drift_deg=8.0,
    )
    n = len(s["tilts"])
    for i, t in enumerate(s["tilts"]):
        mean = 0.5 * (t["defocus_u_a"] + t["defocus_v_a"])
        assert mean == pytest.approx(3e4 + 40.0 * t["true_tilt_angle_deg"])
        ramp = i / (n - 1) - 0.5  # linear in acquisition order, one astigmatism per series
        assert t["defocus_u_a"] - t["defocus_v_a"] == pytest.approx(400.0 + 100.0 * ramp)
    angles = [t["astigmatism_angle_deg"] for t in s["tilts"]]
    assert max(angles) - min(angles) == pytest.approx(8.0)


def test_drift_and_jitter_add_to_the_beam_induced_path():
    base = _plan()
    drift = _plan(drift_px_per_frame=0.2)
    both = _plan(drift_px_per_frame=0.2, jitter_px=0.1)
    for a, b, c in zip(base["tilts"], drift["tilts"], both["tilts"], strict=False):
        d = np.asarray(b["frame_shifts_px"]) - np.asarray(a["frame_shifts_px"])
        step = np.diff(d, axis=0)  # a straight line at 0.2 px per frame
        assert np.allclose(step, step[0]) and np.linalg.norm(step[0]) == pytest.approx(0.2)
        assert np.allclose(np.asarray(b["frame_shifts_px"]).mean(0), 0.0, atol=1e-12)
        jitter = np.asarray(c["frame_shifts_px"]) - np.asarray(b["frame_shifts_px"])
        assert 0.02 < jitter.std() < 0.3
        assert a["xray_hits"] == b["xray_hits"]  # the old draws are untouched


def test_xray_events_are_pixels_pairs_and_streaks_with_the_given_counts():
    s = _plan(xray_events_per_frame=(1, 5), xray_counts=(40.0, 250.0), xray_streak_max_px=5)
    nx, ny = s["image_size"]
    sizes, per_frame = [], {}
    for t in s["tilts"]:
        events: dict = {}
        for h in t["xray_hits"]:
            events.setdefault(h["event"], []).append(h)
            per_frame[(t["acquisition_order"], h["frame"])] = per_frame.get(
                (t["acquisition_order"], h["frame"]), set()
            ) | {h["event"]}
            assert 0 <= h["x"] < nx and 0 <= h["y"] < ny
        for pixels in events.values():
            xy = np.array([(p["x"], p["y"]) for p in pixels])
            assert 40 <= pixels[0]["excess_counts"] <= 250
            assert all(p["excess_counts"] <= pixels[0]["excess_counts"] for p in pixels)
            if len(xy) > 1:  # a straight line of neighbouring pixels
                steps = np.diff(xy, axis=0)
                assert (np.abs(steps).max(1) == 1).all() and (steps == steps[0]).all()
            sizes.append(len(xy))
    assert all(1 <= len(v) <= 5 for v in per_frame.values())
    assert len(per_frame) == len(s["tilts"]) * 12  # every frame has at least one event
    assert {1, 2} <= set(sizes) and max(sizes) >= 3 and max(sizes) <= 5


def test_gain_stripes_multiply_column_blocks_and_keep_the_hot_pixels():
    plain = make_detector(small_config())
    striped = make_detector(small_config(gain_stripe_amplitude=0.05, gain_stripe_width_px=16))
    assert plain["hot_pixels"] == striped["hot_pixels"]
    ratio = striped["gain"] / plain["gain"]
    assert np.allclose(ratio, ratio[0:1, :], rtol=1e-5)  # per column
    blocks = ratio[0].reshape(-1, 16)
    assert blocks.mean(1).std() > 0.01  # blocks differ ...
    assert (blocks.std(1) < 0.5 * blocks.mean(1).std()).all()  # ... more than columns within one


def test_dark_views_are_the_highest_tilts_and_lose_their_counts():
    base, s = _plan(), _plan(n_dark_views=2, dark_view_factor=0.05)
    dark = [t for t in s["tilts"] if t["dark_view"]]
    assert len(dark) == 2
    top = max(abs(t["nominal_tilt_angle_deg"]) for t in s["tilts"])
    assert all(abs(t["nominal_tilt_angle_deg"]) == top for t in dark)
    for a, b in zip(base["tilts"], s["tilts"], strict=False):
        factor = 0.05 if b["dark_view"] else 1.0
        assert b["mean_counts_per_frame_px"] == pytest.approx(factor * a["mean_counts_per_frame_px"])
    with pytest.raises(ValueError, match="n_dark_views"):
        small_config(n_dark_views=5)
