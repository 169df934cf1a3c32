"""`python -m fedlm.report` on a real tiny sweep over seeds and client optimizers, end to end."""

from __future__ import annotations

import csv
import io

import mlflow
import numpy as np
import pytest
from scipy import stats

from tests.commands.test_sweeps import sweep_runs
from tests.conftest import TINY, run_fedlm


@pytest.mark.e2e
def test_report_of_a_tiny_sweep_over_seeds(tmp_path):
    experiment = "report_e2e"
    sweep = run_fedlm(["-m", "seed=0,1", "optimizer=sgd,adam", *TINY, f"mlflow.experiment_name={experiment}"], tmp_path)
    assert sweep.returncode == 0, sweep.stdout[-3000:]
    parent, children = sweep_runs(experiment)

    result = run_fedlm([f"mlflow.experiment_name={experiment}"], tmp_path, module="fedlm.report")  # parent=latest
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    assert f"parent run {parent.info.run_id}" in out and "4 finished runs in 2 groups" in out

    # The numbers, from the children's own metric histories, with SciPy.
    client = mlflow.MlflowClient()
    finals, reached = {}, {}
    for child in children:
        loss = client.get_metric_history(child.info.run_id, "eval/loss")
        accuracy = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "eval/accuracy"))
        group = f"optimizer={child.data.params['optimizer']}"
        final = (max(loss, key=lambda m: m.step).value, accuracy[-1][1])
        finals.setdefault(group, []).append(final)
        reached.setdefault(group, []).append(any(v >= 0.5 for _, v in accuracy))  # the runs' report.target_accuracy
    assert sorted(finals) == ["optimizer=adam", "optimizer=sgd"]
    for group, values in finals.items():
        loss, accuracy = np.array(values).T
        half = stats.t.interval(0.95, 1, loss.mean(), stats.sem(loss))[1] - loss.mean()
        row = next(line for line in out.splitlines() if line.startswith(f"{group} "))
        assert row.split()[1:3] == ["2", "0,1"] and f"{loss.mean():.4f} ± {half:.4f}" in row, row
        assert f"{2 - sum(reached[group])} of 2" in row

    p = stats.ttest_ind(*(np.array(finals[g])[:, 0] for g in sorted(finals)), equal_var=False).pvalue
    assert f"{p:.3g}" in out and "n < 3: weak" in out

    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {f"report/{f}" for f in ("report.md", "groups.csv", "tests.csv", "runs.csv", "eval_curves.png")}
    groups = list(
        csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/groups.csv")))
    )
    assert {r["group"]: float(r["final_eval_loss_mean"]) for r in groups} == pytest.approx(
        {g: np.mean(np.array(v)[:, 0]) for g, v in finals.items()}
    )

    # Bad input: one line naming the key and value, exit 2.
    bad = run_fedlm(["parent=nosuchrun", f"mlflow.experiment_name={experiment}"], tmp_path, module="fedlm.report")
    assert bad.returncode == 2 and bad.stdout.strip().splitlines() == [
        f"fedlm.report: config error: parent='nosuchrun': no such run in {mlflow.get_tracking_uri()}"
    ], bad.stdout
