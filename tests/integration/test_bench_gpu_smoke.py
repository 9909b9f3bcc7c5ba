"""bench/gpu.py --smoke: every path of the GPU benchmark at toy sizes on the CPU, so that the script
a person runs on a GPU cannot rot between GPU runs. Figures are not checked (CPU timings mean nothing
for the GPU targets); that every measurement ran and the table and JSON came out is."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["cifar10/a_eager_fp32", "cifar10/b_bf16_autocast", "cifar10/c_bf16_compile", "cifar10/flops_per_step",
        "cifar10/loader_examples_per_s", "cifar10/plain_loop_on_shards", "cifar10/ray_train_1_worker",
        "cifar10/sampling", "mnist_binarised/a_eager_fp32", "mnist_binarised/c_bf16_compile", "text8/a_eager_fp32",
        "text8/c_bf16_compile"]


def test_gpu_benchmark_smoke_runs_every_measurement(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the tests' cluster
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    failed = {k: results[k]["error"] for k in ROWS if "error" in results[k]}
    assert not failed, failed
    assert results["cifar10/flops_per_step"]["flops"] > 0
    assert results["cifar10/sampling"]["samples_per_s_1000_steps"] > 0
    for row in ROWS:
        if "examples_per_s" in results[row]:
            assert results[row]["examples_per_s"] > 0, row
    for line in ("(c)/(a)", "MFU", "headroom", "Ray/plain", "sampling, 1000 steps", "text8 paper network"):
        assert line.replace("MFU", "model FLOP utilisation") in proc.stdout, line
