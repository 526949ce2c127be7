#!/usr/bin/env bash
# Every GPU check in one call, for a session lent a CUDA machine (benchmarks/README.md):
#   1. the CUDA tests (skipped everywhere else): CPU == CUDA for motion, CTF, the X-ray eraser and
#      the align (fiducial, patch) + reconstruct (WBP, SIRT) steps through the CLI;
#   2. benchmarks/align_reconstruct.py on CUDA, quick size, then 41 x 4092 x 5760 (the GPU row);
#   3. benchmarks/motion_ctf.py on CUDA at 1440 x 1024 and one 5760 x 4092 x 8 movie.
# Run from the repository root on a machine whose python3 has a CUDA torch; packages it lacks can sit
# as wheels in .whl/ (installed into /tmp/site). Logs and JSON go to $OUT (default ./gpu_out).
# Arguments pick parts (default all): tests align motion. Optional time limits (s): ALIGN_FULL_S, MOTION_S.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
    echo "cpus $(nproc)"
} 2>&1 | tee "$OUT/env.txt"
parts=" ${*:-tests align motion} "
want() { [[ $parts == *" $1 "* ]]; }

if want tests; then
t0=$SECONDS
timeout "${TESTS_S:-240}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_ctf.py tests/test_ctf_series.py \
    tests/test_motion.py tests/test_xray.py tests/test_step_align.py -k "cuda" 2>&1 | tee "$OUT/tests.log"
echo "tests: $((SECONDS - t0)) s"
fi

if want align; then
t0=$SECONDS
timeout "${SMALL_S:-120}" python3 benchmarks/align_reconstruct.py --small --device cuda --repeats 1 --threads 8 \
    2>&1 | tee "$OUT/align_small.log"
echo "align_reconstruct --small: $((SECONDS - t0)) s"

t0=$SECONDS
timeout "${ALIGN_FULL_S:-330}" python3 benchmarks/align_reconstruct.py --full-size --device cuda --repeats 2 \
    --threads 8 --json "$OUT/align_full.json" 2>&1 | tee "$OUT/align_full.log"
echo "align_reconstruct --full-size: $((SECONDS - t0)) s"
fi

if want motion; then
t0=$SECONDS
timeout "${MOTION_S:-200}" python3 benchmarks/motion_ctf.py --device cuda --sizes 1440x1024 --full-size \
    --repeats 2 --accuracy-tilts 3 --threads 8 --methods "tiltflow core" "tiltflow step" teamtomo \
    --data /tmp/tiltflow-bench-motion-ctf --json "$OUT/motion_ctf.json" 2>&1 | tee "$OUT/motion_ctf.log"
echo "motion_ctf: $((SECONDS - t0)) s"
fi
