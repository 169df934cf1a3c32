"""Never lose an experiment, end to end: runs killed (SIGKILL), interrupted (Ctrl-C, SIGTERM) or diverging, then
resumed, compared with the same config run uninterrupted; no process left in any case."""

from __future__ import annotations

import collections
import os
import re
import signal
import time

import mlflow
import numpy as np
import pytest

from fedlm.fl.checkpoint import RunDirectory
from fedlm.tracking.release import SAMPLES_TABLE
from tests.conftest import TINY, assert_session_ended, read_until, run_fedlm, start_fedlm

CONFIG = [*TINY, "rounds=10", "checkpoint_every=2"]
COMPARED = ("train/loss", "train/accuracy", "train/sequences", "train/batches", "eval/loss", "eval/accuracy")


def _only_run(experiment: str):
    (run,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return run


def _history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow.MlflowClient()
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in COMPARED}


def _final_weights(run_id: str) -> list[np.ndarray]:
    import tensorflow as tf

    path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model/final_model.h5")
    return tf.keras.models.load_model(path, compile=False).get_weights()


def _assert_same_run(run_id: str, reference_id: str) -> None:
    """Same metric steps, each logged once, same values and same final weights (to float tolerance)."""
    got, want = _history(run_id), _history(reference_id)
    for key in COMPARED:
        assert [s for s, _ in got[key]] == [s for s, _ in want[key]], f"{key} steps differ"
        np.testing.assert_allclose(
            [v for _, v in got[key]], [v for _, v in want[key]], rtol=1e-4, atol=1e-6, err_msg=key
        )
    for a, b in zip(_final_weights(run_id), _final_weights(reference_id), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    result = run_fedlm([*CONFIG, "mlflow.experiment_name=uninterrupted"], tmp_path_factory.mktemp("uninterrupted"))
    assert result.returncode == 0, result.stdout[-3000:]
    run = _only_run("uninterrupted")
    eval_steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/loss")]
    assert sorted(eval_steps) == list(range(11))
    return run.info.run_id


@pytest.mark.e2e
def test_finished_run_keeps_its_last_checkpoints(uninterrupted):
    run = mlflow.get_run(uninterrupted)
    assert RunDirectory(run.data.tags["fedlm.run_dir"]).rounds() == [8, 10]  # every 2 rounds, the last 2 kept
    assert run.data.tags["fedlm.data_oov_chars"] == "0" and run.data.tags["fedlm.data_oov_distinct"] == ""


def _interrupt_at(args: list[str], tmp_path, run_dir: str, round_num: int, sig: signal.Signals):
    """Start fedlm, send `sig` when it prints round `round_num`'s line, wait for it; nothing of it may be left."""
    proc = start_fedlm(args, tmp_path, run_dir)
    before = read_until(proc, rf"^round +{round_num}/")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C in a terminal signals the whole foreground process group
    else:
        os.kill(proc.pid, sig)
    after, _ = proc.communicate(timeout=120)
    assert_session_ended(proc.pid)  # after SIGKILL too: the kernel stopped the TFF worker (PDEATHSIG)
    return proc.returncode, before + after


@pytest.mark.e2e
def test_run_preempted_three_times_ends_as_the_uninterrupted_run(uninterrupted, tmp_path):
    """SIGKILL, then SIGTERM, then Ctrl-C, each followed by resume=true: same steps, values and final weights."""
    experiment = ["mlflow.experiment_name=preempted"]
    code, out = _interrupt_at([*CONFIG, *experiment], tmp_path, "run", 3, signal.SIGKILL)
    assert code == -signal.SIGKILL
    first = _only_run("preempted")
    assert first.info.status == "RUNNING"  # nobody could mark it
    directory = RunDirectory(tmp_path / "run")
    assert directory.rounds()[-1] == 2  # round 3 was logged, but not checkpointed: it will be recomputed

    resumed_after = [2]
    for sig, at in ((signal.SIGTERM, 5), (signal.SIGINT, 7)):
        code, out = _interrupt_at([*CONFIG, *experiment, "resume=true"], tmp_path, f"resumed_{sig.name}", at, sig)
        assert f"resuming MLflow run {first.info.run_id}" in out and f"after round {resumed_after[-1]}" in out
        assert code == 128 + sig, out[-3000:]
        assert _only_run("preempted").info.status == "KILLED"
        saved = directory.rounds()[-1]  # the round in progress finished and was saved, off the every-2 schedule
        assert saved in (at, at + 1), out[-3000:]
        assert f"last checkpoint: round {saved}" in out and f"resume={directory.path}" in out
        resumed_after.append(saved)

    final = run_fedlm([*CONFIG, *experiment, "resume=true"], tmp_path, run_dir="last")
    assert final.returncode == 0, final.stdout[-3000:]
    run = _only_run("preempted")  # the same MLflow run throughout, now finished
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["fedlm.resumed_after_rounds"] == ",".join(map(str, resumed_after))
    _assert_same_run(run.info.run_id, uninterrupted)  # recomputed rounds logged once


@pytest.mark.e2e
def test_diverging_run_stops_keeps_last_good_checkpoint_and_fails(tmp_path):
    # A server learning rate of 1e38: round 1 is fine, round 2's loss overflows to inf.
    result = run_fedlm(
        [
            *TINY,
            "rounds=4",
            "eval_every=5",
            "checkpoint_every=1",
            "server_optimizer.learning_rate=1e38",
            "mlflow.experiment_name=diverging",
        ],
        tmp_path,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    diverged = re.search(r"training diverged at round (\d+): (.*)", result.stdout)
    assert diverged, result.stdout[-3000:]
    round_num = int(diverged[1])
    assert RunDirectory(tmp_path / "run").rounds()[-1] == round_num - 1  # the diverged state was never written
    assert f"last checkpoint: round {round_num - 1}" in result.stdout and "Traceback" not in result.stdout
    run = _only_run("diverging")
    assert run.info.status == "FAILED"
    train_loss = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in train_loss) == round_num  # the bad round is logged, nothing after it


@pytest.mark.e2e
def test_a_huge_but_finite_loss_is_divergence_not_a_crash(tmp_path):
    """optimizer.learning_rate=1e6: round 1's train_loss is ~6e5 nats a character. Its perplexity overflowed in the
    metrics (OverflowError): the round went unlogged, the divergence check never ran, and the run failed with a
    traceback, then suggested resuming it."""
    result = run_fedlm([*TINY, "optimizer.learning_rate=1e6", "mlflow.experiment_name=huge_loss"], tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert re.search(r"training diverged at round 1: train_loss is [0-9.e+]+, its perplexity inf", result.stdout), (
        result.stdout[-3000:]
    )
    assert "Traceback" not in result.stdout and "continue it with" not in result.stdout, result.stdout[-3000:]
    assert RunDirectory(tmp_path / "run").rounds() == [0] and "last checkpoint: round 0" in result.stdout
    run = _only_run("huge_loss")
    assert run.info.status == "FAILED"
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]  # the bad round, logged
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/perplexity")] == [1]


@pytest.mark.e2e
def test_resumed_run_has_each_rounds_samples_once(tmp_path):
    """Killed after round 3 (logged with its samples, not checkpointed: every 2 rounds), resumed: round 3 is
    recomputed, and its samples were appended again, since the rounds already in the table were looked up in the
    wrong experiment (with a warning "Not all runs have the specified table artifact" on every resume)."""
    args = [
        *TINY,
        "rounds=4",
        "sample_every=1",
        "checkpoint_every=2",
        "sample_length=300",
        "mlflow.experiment_name=samples_once",
    ]
    code, out = _interrupt_at(args, tmp_path, "run", 4, signal.SIGKILL)  # during round 4's samples
    assert code == -signal.SIGKILL
    assert RunDirectory(tmp_path / "run").rounds()[-1] == 2, out[-3000:]
    # From a shell where another tool's `mlflow.set_experiment` left $MLFLOW_EXPERIMENT_ID (here: none of this
    # store's), which MLflow read when logging the final model's metrics, and failed the resumed run at its end.
    stale = {"MLFLOW_EXPERIMENT_ID": "424242"}
    resumed = run_fedlm([*args, "resume=true"], tmp_path, run_dir="resumed", env=stale)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "after round 2" in resumed.stdout and "Not all runs" not in resumed.stdout, resumed.stdout[-3000:]
    run = _only_run("samples_once")
    (model,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert model.source_run_id == run.info.run_id and model.metrics  # in the run's experiment, with its metrics
    table = mlflow.MlflowClient().load_table(run.info.experiment_id, SAMPLES_TABLE, run_ids=[run.info.run_id])
    assert collections.Counter(table["round"]) == dict.fromkeys(range(5), 2)  # 2 prompts x 1 temperature a round


@pytest.mark.e2e
def test_two_processes_resuming_one_run_the_second_is_refused_before_pretraining(tmp_path):
    """Both pass the lookup's busy check (neither holds the run yet); the second was refused only after waiting for
    the first one's pretraining. Now the run directory is locked before the starting model is made."""
    from tests.fl.test_checkpoint import fake_interrupted_run

    long_pretraining = "pretrain.steps=100000"  # the winner pretrains until the test stops it
    fake_interrupted_run("racing", tmp_path / "run", [long_pretraining])
    args = [*TINY, "rounds=5", long_pretraining, "mlflow.experiment_name=racing", f"resume={tmp_path / 'run'}"]
    args.append(f"cache_dir={tmp_path / 'cache'}")
    procs = [start_fedlm(args, tmp_path, f"r{i}") for i in (0, 1)]
    try:
        loser = None
        while loser is None:
            time.sleep(0.5)
            loser = next((p for p in procs if p.poll() is not None), None)
        out, _ = loser.communicate(timeout=60)
        assert loser.returncode == 2, out[-3000:]
        # Refused by the lookup (the winner had locked) or by the lock itself (both passed the lookup): either way
        # before pretraining. (Which one happens depends on the processes' timing.)
        assert f"{tmp_path / 'run'} is being trained by another fedlm process" in out, out
        assert "pretrain" not in out, out  # neither pretrained nor waited for a pretraining
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=60)
            assert_session_ended(p.pid)
