"""Frame-shift estimation shared by global and local motion (internal to ``core.motion*``).

Each frame is aligned against the sum of all other frames (a leave-one-out reference, so its own
noise never correlates with itself), band-passed by the fit range and weighted per ring of |k| by
the signal and noise measured on the aligned frames (:func:`signal_weights`; the B-factor only
weights the coarse search). A coarse search takes the peak of the cross-correlation map at half
the resolution (parabolic sub-pixel); Newton steps on the continuous Fourier cross-correlation
``C(s) = sum_k W(k) Re(F(k) conj(R(k)) exp(2 pi i k.s))`` then refine it with no interpolation
bias. Work is batched over leading dimensions (patches) and, on the CPU, streamed over frames and
blocks so that no temporary is much larger than a few MB (fresh large allocations cost page
faults on every call).

Spectra are rfft2 of down-sampled images; their frequency vectors ``ky``, ``kx`` are given in
cycles per *unbinned* pixel, so shifts are always in unbinned pixels. Shift convention
(DESIGN.md §2): a feature at p in the reference lies at p + s in the frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tiltflow.core.defects import CHUNK_PIXELS, BrightOutliers, row_chunk

TWO_PI = 2.0 * math.pi
COARSE_CROP = 2  # coarse cross-correlation maps at 1/2 of the estimation resolution
GROUP_ELEMENTS = 1 << 21  # spectrum values handled at once on the CPU (16 MB of complex64)


def fast_fft_size(n: int) -> int:
    """Smallest even size >= n whose prime factors are all 2, 3, 5 or 7."""
    m = max(2, int(n) + (int(n) % 2))
    while True:
        r = m
        for p in (2, 3, 5, 7):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2


def estimation_shape(
    image_shape: tuple[int, int], *, pixel_size_a: float, high_res_a: float, binning: int
) -> tuple[int, int]:
    """(h, w) of a down-sampled copy whose Nyquist just holds ``high_res_a`` (<= n // binning)."""
    k_need = min(0.5, pixel_size_a / high_res_a)  # Å/px / Å = cycles per unbinned px
    out = []
    for n in image_shape:
        m = min(fast_fft_size(math.ceil(2.0 * k_need * n * 1.02)), n // binning)
        out.append(max(m, 8))
    return out[0], out[1]


def frequency_vectors(
    spectrum_shape: tuple[int, int], scale_yx: tuple[float, float], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ky`` (h,), ``kx`` (w//2+1,) of an rfft2 of an (h, w) image, in cycles per unbinned px.

    ``scale_yx`` is the size of one pixel of that image in unbinned pixels.
    """
    h, w = spectrum_shape
    ky = torch.fft.fftfreq(h, device=device) / scale_yx[0]
    kx = torch.fft.rfftfreq(w, device=device) / scale_yx[1]
    return ky, kx


def hermitian_weights(width: int, device=None) -> torch.Tensor:
    """Column weights (w//2+1,) that turn a sum over the rfft half plane into the full-plane sum."""
    hw = torch.full((width // 2 + 1,), 2.0, device=device)
    hw[0] = 1.0
    if width % 2 == 0:
        hw[-1] = 1.0
    return hw


def fit_weights(
    ky: torch.Tensor,
    kx: torch.Tensor,
    *,
    pixel_size_a: float,
    fit_range_a: tuple[float, float],
    bfactor_a2: float,
) -> torch.Tensor:
    """Band-pass (cosine edges) times ``exp(B k^2 / 4)`` on the (ky, kx) grid; k in 1/Å."""
    low_a, high_a = fit_range_a
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2) / pixel_size_a  # cycles/px / (Å/px) = 1/Å
    k_lo, k_hi = 1.0 / low_a, 1.0 / high_a
    rise = torch.clamp((k - k_lo) / k_lo, 0.0, 1.0)  # 0 at 1/low, 1 at 2/low
    fall = torch.clamp((k - 0.85 * k_hi) / (0.15 * k_hi), 0.0, 1.0)  # 0 to 0.85/high, 1 at 1/high
    band = 0.5 * (1 - torch.cos(math.pi * rise)) * 0.5 * (1 + torch.cos(math.pi * fall))
    return (band * torch.exp(bfactor_a2 * k**2 / 4.0)).to(torch.float32)


def edge_taper(shape: tuple[int, int], *, fraction: float = 0.1, device=None) -> torch.Tensor:
    """Separable cosine taper (h, w): 0 at the border, 1 beyond ``fraction`` of each side."""
    vecs = []
    for n in shape:
        ramp = max(1, round(fraction * n))
        x = torch.arange(n, device=device, dtype=torch.float32)
        d = torch.minimum(x, n - 1 - x) + 0.5
        vecs.append(torch.sin(0.5 * math.pi * torch.clamp(d / ramp, max=1.0)) ** 2)
    return vecs[0][:, None] * vecs[1][None, :]


def cropped_spectrum_2d(images: torch.Tensor, new_shape: tuple[int, int]) -> torch.Tensor:
    """rfft2 of images (..., h, w) cropped to ``new_shape`` (rfft layout), scaled to keep the mean.

    Equals cropping ``torch.fft.rfft2(images)`` as :func:`tiltflow.core.fourier.fourier_crop_2d`
    does, but transforms along y only the kept columns.
    """
    h, w = images.shape[-2:]
    nh, nw = new_shape
    cols = torch.fft.rfft(images.to(torch.float32), dim=-1)[..., : nw // 2 + 1]
    return _crop_rows(torch.fft.fft(cols, dim=-2), h, nh) * ((nh * nw) / (h * w))


def _crop_rows(spec: torch.Tensor, h: int, nh: int) -> torch.Tensor:
    """Keep the ``nh`` lowest-frequency rows (fft layout) of ``spec`` (..., h, cols)."""
    if nh == h:
        return spec
    top, bottom = (nh + 1) // 2, nh // 2
    if not bottom:
        return spec[..., :top, :]
    return torch.cat([spec[..., :top, :], spec[..., h - bottom :, :]], dim=-2)


def streamed_cropped_spectrum(
    read_rows: Callable[[int, int], torch.Tensor],  # (r0, r1) -> rows r0..r1-1 (rows, w), float32
    image_shape: tuple[int, int],
    new_shape: tuple[int, int],
    *,
    out: torch.Tensor,  # (new_h, new_w//2+1) complex64, written and returned
    work: torch.Tensor | None = None,  # (h, new_w//2+1) complex64 scratch, reused between calls
) -> torch.Tensor:
    """Write the cropped rfft2 of one image (as :func:`cropped_spectrum_2d`) into ``out``.

    The image is read in row blocks and the y transform runs on blocks of kept columns, so on the
    CPU no temporary exceeds a few MB (large fresh allocations cost page faults).
    """
    h, w = image_shape
    nh, nw = new_shape
    kw = nw // 2 + 1
    dev = out.device
    if work is None or tuple(work.shape) != (h, kw):
        work = torch.empty((h, kw), dtype=torch.complex64, device=dev)
    rows = row_chunk(h, w, dev)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        work[r0:r1] = torch.fft.rfft(read_rows(r0, r1), dim=-1)[:, :kw]
    top, bottom = (nh + 1) // 2, nh // 2
    step = kw if dev.type != "cpu" else max(1, CHUNK_PIXELS // h)
    for c0 in range(0, kw, step):
        cols = slice(c0, min(kw, c0 + step))
        full = torch.fft.fft(work[:, cols], dim=0)
        out[:top, cols] = full[:top]
        if bottom:
            out[top:, cols] = full[h - bottom :]
    return out.mul_((nh * nw) / (h * w))


def bin_frames(frames: torch.Tensor, shape: tuple[int, int], *, outliers: BrightOutliers | None = None) -> torch.Tensor:
    """Mean-subtracted, Fourier-cropped copy ``(t, h', w')`` of frames ``(t, h, w)``.

    With ``outliers`` each frame is cleaned block by block on the way (the frames are not copied).
    """
    t, h, w = frames.shape
    dev = frames.device
    out = torch.empty((t, *shape), dtype=torch.float32, device=dev)
    spec = torch.empty((shape[0], shape[1] // 2 + 1), dtype=torch.complex64, device=dev)
    work = torch.empty((h, shape[1] // 2 + 1), dtype=torch.complex64, device=dev)
    for i in range(t):

        def read(r0, r1, i=i):
            block = frames[i, r0:r1]
            return block.float() if outliers is None else outliers.clean(block, i, r0)

        streamed_cropped_spectrum(read, (h, w), shape, out=spec, work=work)
        spec[0, 0] = 0.0  # mean zero
        out[i] = torch.fft.irfft2(spec, s=shape)
    return out


def phase_ramp(ky: torch.Tensor, kx: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``exp(2 pi i k.s)`` (..., h, w//2+1) for shifts (..., 2) (x, y): multiplying moves by -s."""
    py, px = ramp_vectors(ky, kx, shifts)
    return py[..., :, None] * px[..., None, :]


def ramp_vectors(ky, kx, shifts) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the separable factors (..., h) and (..., w') of :func:`phase_ramp`."""
    one = torch.ones((), device=ky.device)
    py = torch.polar(one, TWO_PI * ky * shifts[..., 1, None].to(ky.dtype))
    px = torch.polar(one, TWO_PI * kx * shifts[..., 0, None].to(kx.dtype))
    return py, px


def shifted(spectra: torch.Tensor, ky, kx, shifts) -> torch.Tensor:
    """``spectra * phase_ramp(ky, kx, shifts)`` without making the ramp (one new tensor)."""
    py, px = ramp_vectors(ky, kx, shifts)
    return (spectra * py[..., :, None]).mul_(px[..., None, :])


@dataclass(frozen=True)
class SpectraGrid:
    """Frequencies of rfft2 spectra of (down-sampled) images, in cycles per unbinned px.

    ``ky`` (h,) and ``kx`` (w//2+1,) are the frequency vectors, ``image_shape`` the (h, w) of the
    images behind the spectra and ``scale_yx`` the size of one of their pixels in unbinned px.
    """

    ky: torch.Tensor
    kx: torch.Tensor
    image_shape: tuple[int, int]
    scale_yx: tuple[float, float]


@dataclass(frozen=True)
class SearchSchedule:
    """How :func:`align_stack` searches: coarse rounds, Newton rounds and their limits.

    ``coarse_iterations`` cross-correlation peak searches within ``max_shift_px`` (unbinned px),
    then ``outer_iterations`` rounds of ``newton_steps`` Newton steps; with ``adaptive`` (and
    t > 2) each round reweights the spectra by :func:`signal_weights`.
    """

    coarse_iterations: int
    outer_iterations: int
    max_shift_px: float
    newton_steps: int = 3
    adaptive: bool = True


@dataclass
class StackFit:
    """Shifts (..., t, 2) x, y in unbinned px; curvature ``-d2C/ds2`` and variance, (..., t, 2)."""

    shifts: torch.Tensor
    curvature: torch.Tensor
    variance: torch.Tensor


def _coarse_peaks(cc: torch.Tensor, radius_b: tuple[float, float]) -> torch.Tensor:
    """Peak (x, y) in pixels of ``cc`` (..., h, w) within ``radius_b``, parabolic sub-pixel."""
    h, w = cc.shape[-2:]
    dy = torch.fft.fftfreq(h, 1.0 / h, device=cc.device)
    dx = torch.fft.fftfreq(w, 1.0 / w, device=cc.device)
    allowed = (dy.abs()[:, None] <= radius_b[0]) & (dx.abs()[None, :] <= radius_b[1])
    flat = cc.masked_fill(~allowed, -torch.inf).flatten(-2)
    idx = flat.argmax(-1)
    iy, ix = idx // w, idx % w
    cflat = cc.flatten(-2)

    def at(y, x):
        return cflat.gather(-1, ((y % h) * w + (x % w))[..., None])[..., 0]

    def vertex(cm, c0, cp):
        den = cm - 2.0 * c0 + cp
        d = torch.where(den < 0, 0.5 * (cm - cp) / torch.where(den < 0, den, -1.0), 0.0)
        return d.clamp(-0.5, 0.5)

    c0 = at(iy, ix)
    fy = vertex(at(iy - 1, ix), c0, at(iy + 1, ix))
    fx = vertex(at(iy, ix - 1), c0, at(iy, ix + 1))
    return torch.stack([dx[ix] + fx, dy[iy] + fy], dim=-1)


class _LeaveOneOut:
    """``F_i conj(R_i)`` for groups of frames, ``R_i`` the other frames' sum aligned by ``shifts``.

    Frames are handled in groups of at most ``GROUP_ELEMENTS`` spectrum values (all at once on a
    GPU), so no (..., t, h, w') temporaries are made for large movies.
    """

    def __init__(self, spectra, ky, kx, shifts):
        self.spectra, self.ky, self.kx, self.shifts = spectra, ky, kx, shifts
        self.groups = self.group_slices(spectra)
        self.total = torch.zeros_like(spectra[..., 0, :, :])
        for g in self.groups:
            aligned = self._aligned(g)
            self.total.add_(aligned[..., 0, :, :] if aligned.shape[-3] == 1 else aligned.sum(dim=-3))

    @staticmethod
    def group_slices(spectra) -> list[slice]:
        """Frame groups of at most ``GROUP_ELEMENTS`` spectrum values (one group on a GPU)."""
        t = spectra.shape[-3]
        per_frame = spectra[..., 0, :, :].numel()
        size = t if spectra.device.type != "cpu" else max(1, GROUP_ELEMENTS // max(per_frame, 1))
        return [slice(g, min(t, g + size)) for g in range(0, t, size)]

    def _aligned(self, g: slice) -> torch.Tensor:
        return shifted(self.spectra[..., g, :, :], self.ky, self.kx, self.shifts[..., g, :])

    def cross(self, g: slice) -> torch.Tensor:
        """(..., len(g), h, w') cross spectra of the frames in ``g``."""
        ref = self._aligned(g).neg_().add_(self.total.unsqueeze(-3))
        return ref.conj_physical_().mul_(self.spectra[..., g, :, :])


def _ring_means(values, ring, herm, n, smooth_bins):
    """Means over rings (n,) of ``values`` (h, w') and full-plane counts (n,).

    Each ring is averaged with ``smooth_bins`` rings either side.
    """
    kernel = torch.ones(1, 1, 2 * smooth_bins + 1, dtype=torch.float64, device=values.device)
    out = []
    for v in (values.flatten() * herm, herm):
        acc = torch.zeros(n, dtype=torch.float64, device=values.device)
        acc.index_add_(0, ring, v.double())
        out.append(torch.nn.functional.conv1d(acc[None, None], kernel, padding=smooth_bins)[0, 0])
    return out[0] / out[1].clamp_min(1e-12), out[1]


def signal_weights(
    spectra, ky, kx, shifts, groups, width: int, *, smooth_bins: int = 2
) -> torch.Tensor:  # (h, w') weights, max 1
    """Optimal cross-correlation weights from the data's own spectral signal and noise.

    With frames ``spectra`` (..., t, h, w') aligned by ``shifts`` (..., t, 2),
    ``S = (|sum F|^2 - sum |F|^2) / (t (t - 1))`` estimates the signal power per frame and
    ``N = mean |F|^2 - S`` the noise power, both averaged over leading dimensions (patches) and
    over rings of |k| (``smooth_bins`` rings either side); S is lowered by twice its standard
    error, so rings without measurable signal get no weight. ``F_i conj(R_i)`` against a
    leave-one-out reference of t - 1 frames has variance about ``(S + N) ((t - 1) S + N)``, so
    ``w = S / ((S + N) ((t - 1) S + N))`` maximises the precision of the shift. ``width`` is the
    image width behind the rfft columns. Without measurable signal anywhere: ones.
    """
    t = spectra.shape[-3]
    h, wc = spectra.shape[-2:]
    total = torch.zeros_like(spectra[..., 0, :, :])
    power = torch.zeros(total.shape, dtype=torch.float32, device=spectra.device)
    for g in groups:
        total.add_(shifted(spectra[..., g, :, :], ky, kx, shifts[..., g, :]).sum(dim=-3))
        power.add_(spectra[..., g, :, :].abs().square().sum(dim=-3))
    lead = max(1, total[..., 0, 0].numel())
    pair = (total.abs().square() - power).reshape(-1, h, wc).mean(0) / (t * (t - 1))
    power = power.reshape(-1, h, wc).mean(0) / t
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)  # rings one coefficient wide
    step = float(max(ky[1].abs() if h > 1 else 0.0, kx[1] if wc > 1 else 0.0))
    ring = torch.round(k / step).long().flatten()
    n = int(ring.max()) + 1
    herm = hermitian_weights(width, device=k.device).expand(h, wc).flatten()
    signal, count = _ring_means(pair, ring, herm, n, smooth_bins)
    noise = (_ring_means(power, ring, herm, n, smooth_bins)[0] - signal).clamp_min(1e-30)
    # with no signal, a ring's S has SD N / sqrt(t (t - 1) m), m = independent coefficients
    # (half the full-plane count, times the patches)
    m = (0.5 * count * lead).clamp_min(1.0)
    signal = (signal - 2.0 * noise / torch.sqrt(t * (t - 1) * m)).clamp_min(0.0)
    w = signal / ((signal + noise) * ((t - 1) * signal + noise))
    if not bool(w.max() > 0):  # no measurable signal anywhere: keep the given weighting
        return torch.ones((h, wc), dtype=torch.float32, device=spectra.device)
    return (w / w.max())[ring].reshape(h, wc).to(torch.float32)


def _derivatives(cross, ky, kx, shifts, column_weights):
    """Gradient (..., 2) and Hessian terms of ``C(s) = sum Re(cross exp(2 pi i k.s))`` at s.

    Every needed sum is a bilinear form ``u^T cross v`` with u = exp(2 pi i ky sy) [1, ky, ky^2]
    and v = exp(2 pi i kx sx) [1, kx, kx^2], so two batched matrix products do all the work.
    """
    one = torch.ones((), device=ky.device)
    py = torch.polar(one, TWO_PI * ky * shifts[..., 1, None])  # (..., h)
    px = torch.polar(one, TWO_PI * kx * shifts[..., 0, None])  # (..., w')
    u = py[..., :, None] * torch.stack([torch.ones_like(ky), ky, ky**2], -1).to(py.dtype)
    powers_x = torch.stack([torch.ones_like(kx), kx, kx**2], -1)
    v = px[..., :, None] * (column_weights[:, None] * powers_x)
    # (..., 3, 3): m[a, b] = sum ky^a kx^b Q; as (v^T cross^T) u, which BLAS does ~3x faster
    m = ((v.transpose(-2, -1) @ cross.transpose(-2, -1)) @ u).transpose(-2, -1)
    g = -TWO_PI * torch.stack([m[..., 0, 1].imag, m[..., 1, 0].imag], -1)
    c = -(TWO_PI**2)
    return g, c * m[..., 0, 2].real, c * m[..., 2, 0].real, c * m[..., 1, 1].real


def _coarse_shifts(spectra, ky, kx, shifts, image_shape, scale_yx, max_shift_px) -> torch.Tensor:
    """Cross-correlation peaks (..., t, 2), unbinned px, against leave-one-out references.

    The maps are at 1 / ``COARSE_CROP`` of the resolution of ``spectra`` (..., t, h, w//2+1); the
    references are aligned by ``shifts``.
    """
    h, w = image_shape
    mh = min(h, fast_fft_size(math.ceil(h / COARSE_CROP)))
    mw = min(w, fast_fft_size(math.ceil(w / COARSE_CROP)))
    cols = slice(0, mw // 2 + 1)
    loo = _LeaveOneOut(_crop_rows(spectra[..., cols], h, mh), _crop_rows(ky[:, None], h, mh)[:, 0], kx[cols], shifts)
    sy, sx = scale_yx[0] * h / mh, scale_yx[1] * w / mw  # unbinned px per map px
    peaks = []
    for g in loo.groups:
        cc = torch.fft.irfft2(loo.cross(g), s=(mh, mw))
        p = _coarse_peaks(cc, (max_shift_px / sy, max_shift_px / sx))
        peaks.append(torch.stack([p[..., 0] * sx, p[..., 1] * sy], dim=-1))
    return torch.cat(peaks, dim=-2)


def _newton(cross, ky, kx, start, herm, max_step, steps, tol_px=1e-3):
    """Newton ascent of ``C(s)`` from ``start`` (..., 2) for cross spectra (..., h, w').

    Returns (s, curvature, variance), each (..., 2). Stops early once every step is below ``tol_px``
    (the curvature is then the one just evaluated, ``tol_px`` away).
    """
    raw = start
    hxx = hyy = None
    for _ in range(steps):
        g, hxx, hyy, hxy = _derivatives(cross, ky, kx, raw, herm)
        det = hxx * hyy - hxy**2
        ok = (hxx < 0) & (hyy < 0) & (det > 0)
        safe = torch.where(ok, det, 1.0)
        gx, gy = g[..., 0], g[..., 1]
        newton = -torch.stack([(hyy * gx - hxy * gy) / safe, (hxx * gy - hxy * gx) / safe], -1)
        step = torch.where(ok[..., None], newton, torch.sign(g) * max_step)
        step = torch.maximum(torch.minimum(step, max_step), -max_step)
        raw = raw + step
        if float(step.abs().max()) < tol_px:
            break
    else:
        _, hxx, hyy, _ = _derivatives(cross, ky, kx, raw, herm)
    curvature = torch.stack([-hxx, -hyy], -1).clamp_min(1e-30)
    # at the optimum Im(Q) is noise: Var(g) ~ sum (2 pi k)^2 Im(Q)^2
    im2 = shifted(cross, ky, kx, raw).imag.square()
    h2 = herm**2
    var_g = torch.stack([im2.sum(-2) @ (kx**2 * h2), (im2 @ h2) @ ky**2], -1) * TWO_PI**2
    # frames without signal get a huge but finite variance, so smoothing stays well posed
    variance = torch.nan_to_num(var_g / curvature**2, nan=1e6, posinf=1e6).clamp(1e-8, 1e6)
    return raw, curvature, variance


def align_stack(
    spectra: torch.Tensor,  # (..., t, h, w//2+1) complex
    grid: SpectraGrid,
    shifts: torch.Tensor,  # (..., t, 2) starting shifts, unbinned px
    schedule: SearchSchedule,
    *,
    weights: torch.Tensor | None = None,  # (h, w//2+1) fit weights (no Hermitian factor); None: applied
    smooth: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> StackFit:
    """Estimate per-frame shifts of a stack against leave-one-out references (see module doc).

    ``weights=None`` means the spectra already carry the square root of the fit weights. With
    ``schedule.adaptive`` (and t > 2) each Newton round reweights them by :func:`signal_weights`
    measured at the current shifts. ``smooth(shifts, variance)`` ends each round when given.
    """
    ky, kx, image_shape, scale_yx = grid.ky, grid.kx, grid.image_shape, grid.scale_yx
    s = shifts.to(torch.float32).clone()
    t = spectra.shape[-3]
    # A reference built from the other frames carries their errors, -e_i / (t - 1) on average:
    # moving each frame by (t - 1) / t of its measured offset cancels that (one-step convergence).
    damping = (t - 1) / t
    if weights is not None:
        spectra = spectra * weights.sqrt()  # so that F conj(R) carries the fit weights once
    for _ in range(schedule.coarse_iterations):
        peak = _coarse_shifts(spectra, ky, kx, s, image_shape, scale_yx, schedule.max_shift_px)
        s = s + (peak - s) * damping
        s = s - s.mean(dim=-2, keepdim=True)
    herm = hermitian_weights(image_shape[1], device=spectra.device)
    max_step = torch.tensor([0.5 * scale_yx[1], 0.5 * scale_yx[0]], device=s.device)
    curvature = variance = torch.ones_like(s)
    base = spectra
    for _ in range(schedule.outer_iterations):
        if schedule.adaptive and t > 2:
            groups = _LeaveOneOut.group_slices(base)
            spectra = base * signal_weights(base, ky, kx, s, groups, image_shape[1]).sqrt()
        loo = _LeaveOneOut(spectra, ky, kx, s)
        fits = [_newton(loo.cross(g), ky, kx, s[..., g, :], herm, max_step, schedule.newton_steps) for g in loo.groups]
        raw, curvature, variance = (torch.cat(v, dim=-2) for v in zip(*fits, strict=False))
        raw = s + (raw - s) * damping
        variance = variance * damping**2
        s = smooth(raw, variance) if smooth is not None else raw
        s = s - s.mean(dim=-2, keepdim=True)
    return StackFit(shifts=s, curvature=curvature, variance=variance)
