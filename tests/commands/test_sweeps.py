"""Multiruns in MLflow: one parent per sweep, one child per job, with the basic and joblib launchers and Optuna."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import TINY, UV_RUN, assert_session_ended, read_until, run_fedlm, start_fedlm

SWEEP = ["optimizer=sgd,adam", "client_weighting=num_examples,uniform"]


def sweep_runs(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    return parents[0], children


def assert_full_history(children, rounds: int) -> None:
    client = mlflow.MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED"
        steps = {
            k: sorted(m.step for m in client.get_metric_history(child.info.run_id, k))
            for k in ("eval/loss", "train/loss")
        }
        assert steps == {"eval/loss": list(range(rounds + 1)), "train/loss": list(range(1, rounds + 1))}, steps


@pytest.mark.e2e
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_four_job_sweep_is_one_parent_with_four_named_tagged_children(tmp_path, launcher):
    experiment = f"sweep_{launcher}"
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"] if launcher == "joblib" else []
    result = run_fedlm(["-m", *TINY, "rounds=1", *SWEEP, *parallel, f"mlflow.experiment_name={experiment}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "database is locked" not in result.stdout

    parent, children = sweep_runs(experiment)
    assert parent.info.run_name == "optimizer × client_weighting" and parent.info.status == "FINISHED"
    assert parent.data.tags["fedlm.swept_keys"] == "optimizer client_weighting"
    parent_plots = mlflow.MlflowClient().list_artifacts(parent.info.run_id, "plots")  # the sweep callback's figure
    assert [a.path for a in parent_plots] == ["plots/sweep_eval_accuracy.png"]
    definition = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep.yaml"))
    assert set(SWEEP) <= set(definition["overrides"]) and definition["launcher"]["_target_"].endswith(
        "JoblibLauncher" if launcher == "joblib" else "BasicLauncher"
    )

    assert sorted(c.info.run_name for c in children) == sorted(
        f"{o} · {w}" for o in ("sgd", "adam") for w in ("num_examples", "uniform")
    )
    for child in children:
        tags = child.data.tags
        assert child.info.run_name == f"{tags['override.optimizer']} · {tags['override.client_weighting']}"
        assert child.data.params["client_weighting"] == tags["override.client_weighting"]
        assert tags["override.model"] == "tiny"
    assert_full_history(children, rounds=1)

    # The parent: what the children share, and what was swept, as params; a description naming the best child.
    swept = ("optimizer", "client_weighting")
    shared = {k: v for k, v in children[0].data.params.items() if k.split(".")[0] not in swept}
    assert {k: parent.data.params[k] for k in shared} == shared and shared["rounds"] == "1"
    assert parent.data.params["optimizer"] == "sgd,adam"
    assert parent.data.params["client_weighting"] == "num_examples,uniform"
    best = min(children, key=lambda c: c.data.metrics["eval/loss"])
    assert parent.data.tags["fedlm.sweep_best_run"] == best.info.run_id
    assert f"Best: **{best.info.run_name}** (run `{best.info.run_id}`)" in parent.data.tags["mlflow.note.content"]


@pytest.mark.e2e
def test_optuna_experiment_runs_three_trials_minimizing_final_eval_loss(tmp_path):
    result = run_fedlm(
        ["-m", "experiment=optuna", *TINY, "rounds=1", "eval_every=1", "mlflow.experiment_name=optuna"], tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:]
    parent, children = sweep_runs("optuna")
    assert len(children) == 3 and parent.info.run_name == "optuna: client lr × server lr × local_epochs"
    assert all(c.info.run_name.startswith("client lr=") for c in children)
    assert_full_history(children, rounds=1)
    final_losses = [
        mlflow.MlflowClient().get_metric_history(c.info.run_id, "eval/loss")[-1].value
        for c in children
        if c.data.metrics
    ]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(final_losses), rel=1e-6)
    learning_rates = {float(c.data.params["optimizer.learning_rate"]) for c in children}
    assert len(learning_rates) == 3 and all(0.05 <= lr <= 2.0 for lr in learning_rates)


def test_a_locked_sqlite_store_is_waited_out_not_lost(tmp_path):
    """Parallel jobs lock the store for moments; MLflow's sqlite busy timeout (20 s) makes a writer wait, not fail."""
    import sqlite3
    import threading

    uri = f"sqlite:///{tmp_path / 'locked.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("locked"))
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # what another job's write transaction does, here for 2 s
    released = threading.Event()
    threading.Timer(2.0, lambda: (released.set(), holder.execute("COMMIT"))).start()
    try:
        for step in range(3):
            client.log_metric(run.info.run_id, "eval_loss", 1.0 / (step + 1), step=step)
            assert released.is_set()  # the write could only finish once the lock was released: it waited
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [0, 1, 2]
    finally:
        released.wait()
        holder.close()


@pytest.mark.e2e
def test_ctrl_c_stops_a_joblib_sweep_job_by_job_and_resume_true_completes_it(tmp_path):
    """Ctrl-C (SIGINT to the process group, through `uv run`) in a 3-job sweep on 2 joblib workers: the running
    jobs end KILLED with their checkpoints (joblib used to kill their processes mid-round: RUNNING, lost), the third
    does not start, the parent is KILLED and says what became of each job; `-m … resume=true` then continues the
    same parent: the stopped jobs resume, the third starts, all finish."""
    args = ["-m", *TINY, "rounds=6", "sample_every=2", "sample_length=500", "seed=0,1,2"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "mlflow.experiment_name=stopped_sweep"]
    proc = start_fedlm(args, tmp_path, python=UV_RUN)
    before = ""
    while not all(_in_rounds(tmp_path / "sweep" / job) for job in ("0", "1")):  # both jobs, not one job twice
        before += read_until(proc, r"^round +\d+/")
    os.killpg(proc.pid, signal.SIGINT)
    after, _ = proc.communicate(timeout=600)
    assert_session_ended(proc.pid)
    out = before + after
    assert proc.returncode == 130, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    report = out[out.index("fedlm: the sweep was stopped by SIGINT:") :].splitlines()
    assert sorted(report[1:3]) == [
        f"  seed={s}: KILLED after round {r}" for s, r in sorted(_killed_rounds(out).items())
    ], report
    assert report[3] == "  seed=2: not started" and "resume=true" in report[4], report
    parent, children = sweep_runs("stopped_sweep")
    assert parent.info.status == "KILLED" and sorted(c.info.status for c in children) == ["KILLED", "KILLED"]

    resumed = run_fedlm([*args, "resume=true"], tmp_path, run_dir="again")
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert f"MLflow sweep parent run {parent.info.run_id}" in resumed.stdout and "reopened" in resumed.stdout
    again, children = sweep_runs("stopped_sweep")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["seed=0", "seed=1", "seed=2"]
    assert_full_history(children, rounds=6)


def _in_rounds(job_dir: Path) -> bool:
    """The job's own console (its run.log, Hydra's log lines) shows a round trained: it is past its start-up."""
    log = job_dir / "run.log"
    return log.is_file() and re.search(r"\] - round +[1-9]\d*/", log.read_text()) is not None


def _killed_rounds(out: str) -> dict[int, int]:
    """{seed: last checkpoint round} from the jobs' own `stopped by SIGINT` lines."""
    found = re.findall(r"marked KILLED; last checkpoint: round (\d+) in \S+/(\d+)/checkpoints", out)
    return {int(job): int(round_num) for round_num, job in found}


@pytest.mark.e2e
def test_submitit_local_sweep_is_one_parent_with_its_children_and_outputs_in_the_sweep_dir(tmp_path):
    """`hydra/launcher=submitit_local`: the path `submitit_slurm` takes (the jobs pickled, run by submitit's own
    process, finding their parent run by the sweep directory), on this machine."""
    experiment = "sweep_submitit"
    args = ["-m", *TINY, "rounds=1", "optimizer=sgd,adam", "hydra/launcher=submitit_local"]
    result = run_fedlm([*args, f"mlflow.experiment_name={experiment}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]

    parent, children = sweep_runs(experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags["fedlm.launcher"].endswith("LocalLauncher")
    assert sorted(c.info.run_name for c in children) == ["adam", "sgd"]
    assert_full_history(children, rounds=1)
    assert parent.data.tags["fedlm.sweep_best_run"] in {c.info.run_id for c in children}

    sweep_dir = tmp_path / "sweep"
    for job in ("0", "1"):  # each job's run directory, as with the other launchers
        assert (sweep_dir / job / "final_model.h5").is_file() and (sweep_dir / job / "checkpoints").is_dir()
        assert "round 1/1" in (sweep_dir / job / "run.log").read_text()
    logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))  # submitit's record of each job: its console
    assert len(logs) == 2 and all("final eval_loss" in log.read_text() for log in logs), logs
