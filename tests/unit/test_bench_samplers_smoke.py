"""bench/samplers.py --smoke keeps every path of the sampler benchmark working between full runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bfn_core import SAMPLERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_samplers_bench_smoke_writes_a_finite_point_per_sampler_dataset_and_nfe(tmp_path):
    out = tmp_path / "bench_samplers.json"
    # BFN_HOME: the digits classifier's cache goes to the test's folder, not the checkout's .bfn
    env = {**os.environ, "BFN_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "samplers.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.with_suffix(".png").stat().st_size > 0
    results = json.loads(out.read_text())["datasets"]
    assert set(results) == {"digits", "mixture", "markov"}
    for name, r in results.items():
        points = {(p["sampler"], p["target_nfe"]): p for p in r["points"]}
        assert set(points) == {(s, n) for s in SAMPLERS for n in (2, 4)}, name
        for (sampler, nfe), p in points.items():
            assert p["error"] is None, (name, sampler, p["error"])
            assert math.isfinite(p["metrics"][r["headline"]]), (name, sampler, nfe)
            # counted by the hook: n steps are n + 1 network calls, so the target NFE is met exactly
            assert p["nfe"] == nfe == p["steps"] + 1, (name, sampler, p)
            assert p["seconds_per_sample"] > 0
        assert r["verdict"]["status"] in ("PASS", "MISS"), name
        assert f"== {name} (" in proc.stdout and "verdict:" in proc.stdout
