"""benchmarks/gpu/check.sh dry-runs on the CPU: every step runs and one JSON comes out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True
    steps = report["steps"]
    assert steps["gpu_tests"]["status"] == "ok" and "collected" in steps["gpu_tests"]["log_tail"]
    records = steps["bench_cupy"]["result"]["records"]
    assert records and records[0]["oscillator_steps_per_s"] > 0 and records[0]["backend"] == "torch"
    assert steps["bench_train"]["status"] == "ok"
    bad = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh"), "--bogus"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "--bogus" in bad.stderr
