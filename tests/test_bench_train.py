"""Smoke test of benchmarks/bench_train.py at a toy size (its numbers are never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
TOY = ["--contexts", "8,16", "--layers", "1", "--heads", "2", "--d-model", "16", "--vocab", "11", "--batch", "2",
       "--repeats", "2,1", "--steps", "1", "--warmup", "0"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_bench_train_writes_every_arm_and_context(tmp_path):
    out = tmp_path / "train.json"
    res = run(*TOY, "--arms", "vanilla,ssa,fsn", "--out", str(out))
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert result["reference"] == "vanilla" and set(result["by_context"]) == {"8", "16"}
    for rows in result["by_context"].values():
        assert set(rows) == {"vanilla", "ssa", "fsn"}
        assert rows["vanilla"]["speed_vs_vanilla"] == 1.0
        for row in rows.values():
            assert row["tokens_per_s"] > 0 and row["peak_tensor_mib"] > 0 and row["parameters"] > 0


def test_bench_train_refuses_a_folder_without_nanogpt(tmp_path):
    res = run(*TOY, "--nanogpt", str(tmp_path), "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "has no model.py" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.json").exists()


def test_bench_train_takes_a_device_and_refuses_a_missing_gpu(tmp_path):
    import torch

    assert "--device" in run("--help").stdout  # what the GPU check looks for
    res = run(*TOY, "--device", "tpu", "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "--device 'tpu' is not allowed" in res.stderr
    if not torch.cuda.is_available():
        res = run(*TOY, "--device", "cuda", "--out", str(tmp_path / "x.json"))
        assert res.returncode == 2 and "no CUDA device" in res.stderr
    assert not (tmp_path / "x.json").exists()
