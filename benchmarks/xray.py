"""X-ray removal: how many hits end below 5 SD of the noise in motion-corrected sums, and how many
gold-bead pixels change, for frame-level removal + eraser vs the eraser alone; and speed.

Run: ``python benchmarks/xray.py [--movies 6] [--quick]`` (accuracy table, CPU, ~2-4 min) or
``python benchmarks/xray.py --timing [--repeats 5] [--hits 100]`` (speed).

Accuracy: per condition, ``--movies`` simulated 512 x 512 movies
(``tiltflow.testing.xray_movies.simulate_movie``: textured ice, 5-15 nm gold beads with CTF
fringes, sub-pixel beam-induced motion, striped gain, Poisson counts; 1-5 X-ray events per frame
of 40-250 raw counts per pixel: single pixels, pairs, 3-5 px streaks or a mix, anywhere, borders
and beads included). Each movie is summed with its true shifts (Fourier shifts, as motion
correction does), optionally Fourier-binned as stacks often are, and then:

- "eraser alone": ``erase_xrays`` on the sum of the frames with hits;
- "frames + eraser": ``remove_frame_xrays`` on the frames, then the sum, then ``erase_xrays``.

A hit's residual is the largest |result - reference| within 3 px (Chebyshev) of where its pixels
land in the sum, in SDs of the sum's noise (sqrt of its expected counts); the reference is the
sum of the same frames without hits (same Poisson draws), so lobes of either sign count. "bead px"
counts pixels within 2 px of a bead that the eraser changed: all of them, and those more than
3 px from every hit (mistaken beads). "frame FP" are frame pixels replaced that got no X-ray
counts, per 10^6 frame pixels; "other px" are sum pixels the eraser changed away from hits.

Speed (``--timing``): seconds per 5760 x 4092 float32 image for ``erase_xrays`` and per 5760 x
4092 x 8 movie for ``remove_frame_xrays`` (CPU with 1 and 2 torch threads, CUDA when available),
each configuration in its own process, with the peak memory the first call adds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

H, W = 4092, 5760
# (label, dose e/px/frame, pixel size Å, hit kind, frames, binning)
CONDITIONS = [
    ("0.3 e/px/fr, 1.38 Å, mixed", 0.3, 1.38, "mixed", 8, 1),
    ("1 e/px/fr, 1.38 Å, mixed", 1.0, 1.38, "mixed", 8, 1),
    ("3 e/px/fr, 1.38 Å, mixed", 3.0, 1.38, "mixed", 8, 1),
    ("1 e/px/fr, 1.38 Å, single", 1.0, 1.38, "single", 8, 1),
    ("1 e/px/fr, 1.38 Å, pairs", 1.0, 1.38, "pair", 8, 1),
    ("1 e/px/fr, 1.38 Å, streaks", 1.0, 1.38, "streak", 8, 1),
    ("0.3 e/px/fr, 4 Å, mixed", 0.3, 4.0, "mixed", 8, 1),
    ("3 e/px/fr, 4 Å, mixed", 3.0, 4.0, "mixed", 8, 1),
    ("1 e/px/fr, 1.38 Å, 4 frames", 1.0, 1.38, "mixed", 4, 1),
    ("0.5 e/px/fr, 2.76 Å, 20 frames", 0.5, 2.76, "mixed", 20, 1),
    ("3 e/px/fr, 5.5 Å, bin 4", 3.0, 5.5, "mixed", 8, 4),
    ("3 e/px/fr, 2.76 Å, bin 2", 3.0, 2.76, "mixed", 8, 2),
]


def _residuals(image, reference, sim, binning, radius_px=3):
    """Per hit: max |image - reference| / noise within ``radius_px`` of its pixels in the sum."""
    import torch

    n = image.shape[-1]
    t = sim["frames"].shape[0]
    lam = torch.nn.functional.avg_pool2d(sim["lam"][None], binning)[0] * binning**2
    z = (image - reference).abs() / (lam * t).clamp_min(1.0).sqrt()
    out, where = [], torch.zeros(image.shape, dtype=torch.bool)
    for hit in sim["hits"]:
        sx, sy = sim["shifts"][hit["frame"]].tolist()
        best = 0.0
        for y, x in hit["pix"]:
            cy, cx = round((y - sy) / binning), round((x - sx) / binning)  # Fourier binning
            y0, y1 = max(cy - radius_px, 0), min(cy + radius_px + 1, n)
            x0, x1 = max(cx - radius_px, 0), min(cx + radius_px + 1, n)
            if y0 < y1 and x0 < x1:
                best = max(best, float(z[y0:y1, x0:x1].max()))
                where[y0:y1, x0:x1] = True
        out.append(best)
    return torch.tensor(out), where


def _condition(label, dose, pixel_a, kind, frames, binning, movies, seed0):
    import torch

    from tiltflow.core.fourier import fourier_crop_2d
    from tiltflow.core.xray import erase_xrays
    from tiltflow.core.xray_frames import remove_frame_xrays
    from tiltflow.testing.xray_movies import XrayHits, hit_mask, motion_sum, simulate_movie

    n = 512 // binning
    acc = {
        k: 0
        for k in (
            "hits",
            "alone_ok",
            "both_ok",
            "alone_bead",
            "alone_bead_false",
            "both_bead",
            "both_bead_false",
            "alone_other",
            "both_other",
            "frame_fp",
            "frame_px",
            "frame_missed",
            "frame_hit_px",
        )
    }
    secs = 0.0

    def summed(fr, sim):
        s = motion_sum(fr, sim)
        return s if binning == 1 else fourier_crop_2d(s, (n, n)) * binning**2

    for m in range(movies):
        sim = simulate_movie(
            seed0 + m,
            shape=(512, 512),
            n_frames=frames,
            dose=dose,
            pixel_size_a=pixel_a,
            n_beads=max(2, int(5 * (pixel_a / 1.38) ** 1.5)),
            hits=XrayHits(kind=kind),
        )
        bead = torch.nn.functional.max_pool2d(sim["bead_mask"][None].float(), binning)[0] > 0
        reference = summed(sim["clean"], sim)
        t0 = time.perf_counter()
        cleaned = remove_frame_xrays(sim["frames"])
        secs += time.perf_counter() - t0
        truth = hit_mask(sim)
        got = torch.zeros_like(truth)
        got[cleaned.frame, cleaned.y, cleaned.x] = True
        acc["frame_fp"] += int((got & ~truth).sum())
        acc["frame_missed"] += int((truth & ~got).sum())
        acc["frame_hit_px"] += int(truth.sum())
        acc["frame_px"] += truth.numel()
        for key, frames_in in (("alone", sim["frames"]), ("both", cleaned.frames)):
            res = erase_xrays(summed(frames_in, sim))
            z, at_hits = _residuals(res.image, reference, sim, binning)
            acc[f"{key}_ok"] += int((z < 5.0).sum())
            acc[f"{key}_bead"] += int((res.mask & bead).sum())
            acc[f"{key}_bead_false"] += int((res.mask & bead & ~at_hits).sum())
            acc[f"{key}_other"] += int((res.mask & ~bead & ~at_hits).sum())
        acc["hits"] += len(sim["hits"])
    acc["ms_per_movie"] = 1000 * secs / movies
    return acc


def accuracy(movies: int, quick: bool) -> None:
    import torch

    torch.set_num_threads(1)
    conditions = CONDITIONS[:3] + CONDITIONS[-2:-1] if quick else CONDITIONS
    print(
        f"X-ray hits below 5 SD in motion-corrected sums; {movies} movies of 512 x 512 per "
        "condition; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    head = (
        "| condition | hits | eraser alone: % < 5 SD | bead px (mistaken) | other px "
        "| frames + eraser: % < 5 SD | bead px (mistaken) | other px | frame FP / 10^6 px "
        "| hit px missed in frames | frame removal ms (512² movie) |"
    )
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    tot: dict = {}
    for i, (label, dose, pixel_a, kind, frames, binning) in enumerate(conditions):
        a = _condition(label, dose, pixel_a, kind, frames, binning, movies, 1000 * (i + 1))
        for k, v in a.items():
            tot[k] = tot.get(k, 0) + v
        print(
            f"| {label} | {a['hits']} | {100 * a['alone_ok'] / a['hits']:.1f} | "
            f"{a['alone_bead']} ({a['alone_bead_false']}) | {a['alone_other']} | "
            f"{100 * a['both_ok'] / a['hits']:.1f} | {a['both_bead']} ({a['both_bead_false']}) | "
            f"{a['both_other']} | {1e6 * a['frame_fp'] / a['frame_px']:.2f} | "
            f"{a['frame_missed']} of {a['frame_hit_px']} | {a['ms_per_movie']:.0f} |",
            flush=True,
        )
    print(
        f"| all | {tot['hits']} | {100 * tot['alone_ok'] / tot['hits']:.1f} | "
        f"{tot['alone_bead']} ({tot['alone_bead_false']}) | {tot['alone_other']} | "
        f"{100 * tot['both_ok'] / tot['hits']:.1f} | "
        f"{tot['both_bead']} ({tot['both_bead_false']}) | "
        f"{tot['both_other']} | {1e6 * tot['frame_fp'] / tot['frame_px']:.2f} | "
        f"{tot['frame_missed']} of {tot['frame_hit_px']} | |"
    )


# ----------------------------------------------------------------------------- speed


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(threads: int, device: str, repeats: int, hits: int, what: str) -> dict:
    import torch

    from tiltflow.core.xray import erase_xrays
    from tiltflow.core.xray_frames import remove_frame_xrays

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    if what == "eraser":
        data = torch.empty(H, W)
        for r in range(0, H, 512):  # in chunks, so that making the image needs no extra memory
            lam = 10.0 * (1.0 + 0.1 * torch.linspace(-1.0, 1.0, H)[r : r + 512, None]).expand(-1, W)
            data[r : r + 512] = torch.poisson(lam, generator=g)
        idx = torch.randint(0, H * W, (hits,), generator=g)
        data.view(-1)[idx] += torch.empty(hits).uniform_(50.0, 2000.0, generator=g)

        def fn(x):
            return int(erase_xrays(x).n_patches)
    else:  # a movie of 8 frames at 1 e/px/frame; frames are cleaned in place (as motion-ctf does)
        data = torch.empty(8, H, W)
        for i in range(8):
            data[i] = torch.poisson(torch.full((H, W), 1.0), generator=g)
        idx = torch.randint(0, data.numel(), (hits,), generator=g)
        data.view(-1)[idx] += torch.empty(hits).uniform_(40.0, 250.0, generator=g)
        fn0 = remove_frame_xrays

        def fn(x):
            return fn0(x, inplace=True).n_replaced_px

    data = data.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss0 = _rss_mb()
    found = fn(data)  # first call: memory peak, allocator and lazy initialisation
    sync()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0  # KiB on Linux
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(data)
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - data.numel() * 4) / 2**20
    wall.sort()
    cpu.sort()
    return {
        "wall_min": wall[0],
        "wall_median": wall[len(wall) // 2],
        "cpu_median": cpu[len(cpu) // 2],
        "peak_mb": peak_mb,
        "found": found,
    }


def timing(repeats: int, hits: int) -> None:
    import torch

    configs: list[tuple[str, int, str, dict]] = [("cpu, 1 thread", 1, "cpu", {}), ("cpu, 2 threads", 2, "cpu", {})]
    if torch.cuda.is_available():
        configs.append((f"cuda ({torch.cuda.get_device_name()})", 2, "cuda", {}))
    print(
        f"{W} x {H}: erase_xrays per float32 image, remove_frame_xrays per 8-frame movie; "
        f"{hits} hits, {repeats} repeats; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'function, configuration':44s} {'s (min)':>8s} {'median':>8s} {'cpu s':>7s} {'+peak MiB':>9s} {'found':>6s}"
    )
    for what in ("eraser", "frames"):
        for name, threads, device, env in configs:
            label = f"{'erase_xrays' if what == 'eraser' else 'remove_frame_xrays'}, {name}"
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(threads),
                    device,
                    what,
                    "--repeats",
                    str(repeats),
                    "--hits",
                    str(hits),
                ],
                check=False,
                capture_output=True,
                text=True,
                env={**os.environ, **env},
            )
            if out.returncode:
                print(f"{label:44s} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout)
            print(
                f"{label:44s} {r['wall_min']:8.3f} {r['wall_median']:8.3f} "
                f"{r['cpu_median']:7.3f} "
                f"{r['peak_mb']:9.0f} {r['found']:6d}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movies", type=int, default=6, help="movies per condition (accuracy)")
    ap.add_argument("--quick", action="store_true", help="4 conditions only")
    ap.add_argument("--timing", action="store_true", help="speed instead of accuracy")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hits", type=int, default=100)
    ap.add_argument("--worker", nargs=3, metavar=("THREADS", "DEVICE", "WHAT"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(int(args.worker[0]), args.worker[1], args.repeats, args.hits, args.worker[2])))
    elif args.timing:
        timing(args.repeats, args.hits)
    else:
        accuracy(args.movies, args.quick)


if __name__ == "__main__":
    main()
