"""`python -m fedlm.bench` runs end to end (tiny sizes; figures are printed, never asserted) and both paths agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_bench_runs_both_paths_with_the_same_results(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedlm.bench",
            "--models",
            "tiny",
            "--rounds",
            "2",
            "--warmup",
            "1",
            "--memory-rounds",
            "3",
            "seq_length=20",
            "max_batches_per_client=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fork_posix" not in proc.stderr  # gRPC's fork handlers, as the memory part starts its TFF worker
    out = proc.stdout
    assert "GRU 16 (model=tiny" in out and "RSS over 3 rounds" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("tutorial ", "stock ", "fedlm "))]
    assert [r[0] for r in rows] == ["tutorial", "stock", "fedlm"] and "fast-layer ratio" in out
    (run,) = mlflow.search_runs(experiment_names=["benchmarks"], output_format="list")
    metrics = run.data.metrics
    assert metrics["gru16_weight_diff"] < 1e-4  # the tutorial's path and fedlm's trained the same model
    assert {"gru16_fedlm_round_s", "gru16_stock_round_s", "gru16_fast_ratio", "memory_rss_first_mb"} <= metrics.keys()
    assert "bench.txt" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
