"""Seconds per 5760 x 4092 float32 image for tiltflow.core.xray.erase_xrays, and peak memory.

Run: ``python benchmarks/xray.py [--repeats 5] [--hits 100]``. Each configuration runs in its own
process (CPU with 1 and 2 torch threads, CPU with PyTorch's THP_MEM_ALLOC_ENABLE=1 huge-page
allocations, CUDA when available) on a Poisson image (10 e/px) with ``--hits`` bright hits.
Peak memory: how far the first call raises the process's peak RSS above its RSS with the
image loaded (CPU), or ``torch.cuda.max_memory_allocated`` minus the image (CUDA). The load
average is printed because wall time on a shared machine depends on it; so is CPU time.
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker(threads: int, device: str, repeats: int, hits: int) -> dict:
    import torch

    from tiltflow.core.xray import erase_xrays

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    image = torch.empty(H, W)
    for r in range(0, H, 512):  # in chunks, so that making the image needs no extra memory
        lam = 10.0 * (1.0 + 0.1 * torch.linspace(-1.0, 1.0, H)[r:r + 512, None]).expand(-1, W)
        image[r:r + 512] = torch.poisson(lam, generator=g)
    idx = torch.randint(0, H * W, (hits,), generator=g)
    image.view(-1)[idx] += torch.empty(hits).uniform_(50.0, 2000.0, generator=g)
    image = image.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss0 = _rss_mb()
    erase_xrays(image)  # first call: memory peak, allocator and lazy initialisation
    sync()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0  # KiB on Linux
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        res = erase_xrays(image)
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - image.numel() * 4) / 2**20
    wall.sort()
    cpu.sort()
    return {"wall_min": wall[0], "wall_median": wall[len(wall) // 2], "cpu_median":
            cpu[len(cpu) // 2], "peak_mb": peak_mb, "patches": int(res.n_patches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hits", type=int, default=100)
    ap.add_argument("--worker", nargs=2, metavar=("THREADS", "DEVICE"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(int(args.worker[0]), args.worker[1], args.repeats, args.hits)))
        return
    import torch

    configs = [("cpu, 1 thread", 1, "cpu", {}), ("cpu, 2 threads", 2, "cpu", {}),
               ("cpu, 2 threads, THP", 2, "cpu", {"THP_MEM_ALLOC_ENABLE": "1"})]
    if torch.cuda.is_available():
        configs.append((f"cuda ({torch.cuda.get_device_name()})", 2, "cuda", {}))
    print(f"erase_xrays on {W} x {H} float32, {args.hits} hits, {args.repeats} repeats; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'configuration':34s} {'s/image (min)':>14s} {'median':>8s} {'cpu s':>7s} "
          f"{'+peak MiB':>9s} {'patches':>8s}")
    for name, threads, device, env in configs:
        out = subprocess.run([sys.executable, __file__, "--worker", str(threads), device,
                              "--repeats", str(args.repeats), "--hits", str(args.hits)],
                             capture_output=True, text=True, env={**os.environ, **env})
        if out.returncode:
            print(f"{name:34s} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout)
        print(f"{name:34s} {r['wall_min']:14.3f} {r['wall_median']:8.3f} {r['cpu_median']:7.3f} "
              f"{r['peak_mb']:9.0f} {r['patches']:8d}")


if __name__ == "__main__":
    main()
