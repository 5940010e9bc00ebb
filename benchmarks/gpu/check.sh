#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU, CuPy and a CUDA build of torch:
#
#     bash benchmarks/gpu/check.sh --out benchmarks/results/gpu_check.json
#     bash benchmarks/gpu/check.sh --dry-run --out /tmp/gpu_check.json      # no GPU: checks the script
#
# Runs, from the repository root, and writes ONE JSON file with every result:
#   1. the CuPy test suite: pytest -m gpu (tests/test_cupy_backend.py and the cupy case of
#      tests/test_dynamics.py), counts and exit code;
#   2. the CuPy kernel benchmark, benchmarks/bench_cupy.py (steps/s, oscillator-steps/s, achieved
#      memory bandwidth against the device's peak), square lattices N = 2^10 ... 2^24;
#   3. benchmarks/bench_train.py --device cuda: tokens/s and peak memory of a training step per arm.
# --dry-run runs the same steps on the CPU, cheaply: the GPU tests are only collected, the kernel
# benchmark times the torch backend on one small lattice, bench_train.py only parses its options.
# Every step runs even when an earlier one fails; the exit code is 1 when any step failed.
set -u
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
DRY=0
OUT=benchmarks/results/gpu_check.json
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "check.sh: unknown option '$1'; allowed: --dry-run, --out FILE" >&2; exit 2 ;;
    esac
    shift
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. the CuPy test suite
if [ $DRY = 1 ]; then
    "$PYTHON" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests/test_cupy_backend.py \
        tests/test_dynamics.py > "$WORK/pytest.log" 2>&1
else
    "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/pytest.xml" tests/test_cupy_backend.py \
        tests/test_dynamics.py > "$WORK/pytest.log" 2>&1
fi
echo $? > "$WORK/pytest.rc"

# 2. the CuPy kernel benchmark
if [ $DRY = 1 ]; then
    "$PYTHON" benchmarks/bench_cupy.py --dry-run --sizes 10:10 --dtypes float64 --repeats 1 --seconds 0.01 \
        --json "$WORK/bench_cupy.json" > "$WORK/bench_cupy.log" 2>&1
else
    "$PYTHON" benchmarks/bench_cupy.py --json "$WORK/bench_cupy.json" > "$WORK/bench_cupy.log" 2>&1
fi
echo $? > "$WORK/bench_cupy.rc"

# 3. training speed on CUDA
if [ $DRY = 1 ]; then
    "$PYTHON" benchmarks/bench_train.py --help > "$WORK/bench_train.log" 2>&1
    echo $? > "$WORK/bench_train.rc"
else
    "$PYTHON" benchmarks/bench_train.py --device cuda --out "$WORK/bench_train.json" > "$WORK/bench_train.log" 2>&1
    echo $? > "$WORK/bench_train.rc"
fi

"$PYTHON" - "$WORK" "$OUT" "$DRY" <<'PY'
import json, os, platform, subprocess, sys, time
from pathlib import Path

work, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"

def text(name):
    path = work / name
    return path.read_text() if path.exists() else None

def step(name):
    rc = text(f"{name}.rc")
    record = {"status": "ok" if rc is not None and rc.strip() == "0" else "failed"}
    if rc is not None:
        record["exit_code"] = int(rc)
    log = text(f"{name}.log")
    if log:
        record["log_tail"] = log[-4000:]
    result = text(f"{name}.json")
    if result:
        record["result"] = json.loads(result)
    return record

tests = step("pytest")
xml = work / "pytest.xml"
if xml.exists():
    import xml.etree.ElementTree as ET
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests["counts"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
if tests.get("exit_code") == 5:  # pytest: no tests collected
    tests["status"] = "failed"
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip() or None
except (OSError, subprocess.TimeoutExpired):
    smi = None
report = {"dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
          "nvidia_smi": smi, "steps": {"gpu_tests": tests, "bench_cupy": step("bench_cupy"),
                                       "bench_train": step("bench_train")}}
report["ok"] = all(s["status"] != "failed" for s in report["steps"].values())
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=1))
print(json.dumps({name: s["status"] for name, s in report["steps"].items()}))
print(f"wrote {out}")
sys.exit(0 if report["ok"] else 1)
PY
