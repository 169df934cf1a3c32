"""Checkpoints on disk, and which run a `resume=` continues (in-process, with the session's MLflow store)."""

from __future__ import annotations

import asyncio
import collections

import mlflow
import numpy as np
import pytest

from fedlm.errors import ConfigError
from fedlm.fl import checkpoint
from fedlm.tracking import resume as resume_lib
from fedlm.tracking import store, tags
from tests.conftest import TINY, compose_config


def _state(value: float) -> collections.OrderedDict:
    return collections.OrderedDict(weights=np.full(3, value, np.float32), step=np.int32(value))


def _save(checkpoints: checkpoint.RoundCheckpoints, rounds) -> None:
    loop = asyncio.get_event_loop()
    for r in rounds:
        loop.run_until_complete(checkpoints.save(_state(r), r))


def test_every_n_rounds_last_k_kept_and_pending_round_written_on_demand(tmp_path):
    ckpt = checkpoint.RoundCheckpoints(tmp_path, every=2, keep=2)
    _save(ckpt, range(6))  # rounds 0..5
    loop = asyncio.get_event_loop()
    assert loop.run_until_complete(ckpt.get_versions()) == [2, 4]
    assert ckpt.save_pending(through=4) == 4  # round 5 is past `through`: not written
    assert ckpt.save_pending() == 5
    assert loop.run_until_complete(ckpt.get_versions()) == [4, 5]
    state, version = loop.run_until_complete(ckpt.load_latest(_state(0)))
    assert version == 5 and np.array_equal(state["weights"], np.full(3, 5.0, np.float32))


def test_a_refused_state_is_never_kept(tmp_path):
    def refuse_nan(state, round_num):
        if not np.isfinite(state["weights"]).all():
            raise ValueError(f"round {round_num}")

    ckpt = checkpoint.RoundCheckpoints(tmp_path, every=2, keep=2, check_state=refuse_nan)
    _save(ckpt, [0, 1])
    diverged = collections.OrderedDict(weights=np.full(3, np.nan, np.float32), step=np.int32(2))
    with pytest.raises(ValueError, match="round 2"):
        asyncio.get_event_loop().run_until_complete(ckpt.save(diverged, 2))
    assert ckpt.save_pending() == 1  # the last good round


def test_finite_state_check_finds_nan_in_any_float_leaf():
    from fedlm.fl.loop import Diverged, check_finite_state

    check_finite_state(_state(1.0), 3)
    with pytest.raises(Diverged, match="round 3"):
        check_finite_state(collections.OrderedDict(a=_state(1.0), b=np.array([np.inf], np.float32)), 3)


def test_config_differences_ignore_keys_that_may_change():
    saved = {
        "seed": 0,
        "rounds": 5,
        "resume": False,
        "optimizer.learning_rate": 0.5,
        "runtime.max_concurrent_clients": None,
    }
    now = {
        "seed": 1,
        "rounds": 50,
        "resume": True,
        "optimizer.learning_rate": 0.5,
        "new_key": 1,
        "runtime.max_concurrent_clients": 1,
    }  # another machine, other speed settings: the same results
    assert resume_lib.config_differences(saved, now) == ["new_key: '<absent>' -> 1", "seed: 0 -> 1"]


def test_a_run_saved_before_a_key_existed_resumes_when_the_key_has_the_value_it_had():
    before = {"seed": 0, "model.rnn_units": 256}  # saved by a fedlm without model.cell and partition
    now = {
        **before,
        "model.cell": "gru",
        "partition._target_": "fedlm.data.partitions.role",
        "partition._partial_": True,
    }
    assert resume_lib.config_differences(before, now) == []
    assert resume_lib.config_differences(before, {**now, "model.cell": "lstm"}) == ["model.cell: 'gru' -> 'lstm'"]
    constant = {"schedule._target_": "fedlm.fl.schedules.constant", "schedule._partial_": True}
    assert resume_lib.config_differences(before, {**now, **constant, "server_schedule.warmup_rounds": 0}) == []
    assert resume_lib.config_differences(before, {**now, **constant, "schedule.warmup_rounds": 2}) == [
        "schedule.warmup_rounds: 0 -> 2"
    ]


def fake_interrupted_run(experiment: str, tmp_path, overrides: list[str], status: str = "KILLED") -> str:
    """An MLflow run with a run directory holding checkpoints of rounds 2 and 3, as fedlm leaves them."""
    cfg = compose_config([*TINY, f"mlflow.experiment_name={experiment}", *overrides])
    experiment_id = store.get_or_create_experiment(experiment).experiment_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, tags={tags.RUN_DIR: str(tmp_path)})
    client.set_terminated(run.info.run_id, status)
    directory = checkpoint.RunDirectory(tmp_path)
    from omegaconf import OmegaConf

    directory.record_start(OmegaConf.to_yaml(cfg, resolve=True), run.info.run_id)
    _save(checkpoint.RoundCheckpoints(directory.checkpoints, every=1, keep=2), range(4))
    return run.info.run_id


def test_resume_true_finds_the_latest_unfinished_run_with_this_config(tmp_path):
    run_id = fake_interrupted_run("resume_true", tmp_path / "a", [])
    fake_interrupted_run("resume_true", tmp_path / "b", ["seed=7"])  # a later one, with another config
    resume = resume_lib.find_run_to_resume(
        compose_config([*TINY, "mlflow.experiment_name=resume_true", "resume=true", "rounds=9"])
    )
    assert resume.run_id == run_id and resume.round == 3 and resume.directory.path == (tmp_path / "a").resolve()


def test_resume_true_without_a_match_names_the_differing_keys(tmp_path):
    fake_interrupted_run("resume_none", tmp_path / "a", ["seed=7"])
    with pytest.raises(ConfigError, match=r"resume=true: no unfinished run.*differs in seed: 7 -> 0"):
        resume_lib.find_run_to_resume(compose_config([*TINY, "mlflow.experiment_name=resume_none", "resume=true"]))


def test_resume_by_directory_or_id_refuses_another_config(tmp_path):
    run_id = fake_interrupted_run("resume_by", tmp_path, [])
    for value in (str(tmp_path), run_id):
        cfg = compose_config([*TINY, "mlflow.experiment_name=resume_by", f"resume={value}", "optimizer=adam"])
        with pytest.raises(ConfigError, match=r"differs from the run's in .*optimizer\._target_.*only rounds"):
            resume_lib.find_run_to_resume(cfg)
    same = compose_config([*TINY, "mlflow.experiment_name=resume_by", f"resume={run_id}", "rounds=5"])
    assert resume_lib.find_run_to_resume(same).run_id == run_id


def test_resume_refuses_a_run_being_trained_and_bad_values(tmp_path):
    run_id = fake_interrupted_run("resume_busy", tmp_path, [])
    cfg = compose_config([*TINY, "mlflow.experiment_name=resume_busy", f"resume={tmp_path}"])
    with (
        checkpoint.RunDirectory(tmp_path).locked(),
        pytest.raises(ConfigError, match="being trained by another fedlm process"),
    ):
        resume_lib.find_run_to_resume(cfg)
    with pytest.raises(ConfigError, match=r"resume='nope': neither an existing directory nor an MLflow run id"):
        resume_lib.find_run_to_resume(compose_config([*TINY, "resume=nope"]))
    with pytest.raises(ConfigError, match=r"last checkpoint is round 3, beyond rounds=2; set rounds >= 3"):
        resume_lib.find_run_to_resume(
            compose_config([*TINY, "mlflow.experiment_name=resume_busy", f"resume={run_id}", "rounds=2"])
        )


def test_a_new_run_refuses_a_directory_with_checkpoints(tmp_path):
    fake_interrupted_run("fresh", tmp_path, [])
    with pytest.raises(ConfigError, match=r"already holds checkpoints \(rounds \[2, 3\]\).*resume="):
        checkpoint.check_fresh(checkpoint.RunDirectory(tmp_path))
    checkpoint.check_fresh(checkpoint.RunDirectory(tmp_path / "elsewhere"))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    ckpt = checkpoint.RoundCheckpoints(tmp_path, every=1, keep=2)
    _save(ckpt, [3, 4])
    for f in (tmp_path / "program_state_4").rglob("*"):  # a partial copy: every file of round 4 emptied
        if f.is_file():
            f.write_bytes(b"")
    loop = asyncio.get_event_loop()
    state, version = loop.run_until_complete(checkpoint.RoundCheckpoints(tmp_path, 1, 2).load_latest(_state(0)))
    assert version == 3 and np.array_equal(state["weights"], np.full(3, 3.0, np.float32))
    assert "cannot load the checkpoint of round 4" in capsys.readouterr().out
    for f in (tmp_path / "program_state_3").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* can be read \(rounds \[3, 4\]\)"):
        loop.run_until_complete(checkpoint.RoundCheckpoints(tmp_path, 1, 2).load_latest(_state(0)))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB filesystem of our own (tmpfs; needs root, as CI has): a disk that really fills up."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_that_fills_the_disk_fails_once_and_leaves_no_partial_write(small_disk):
    ckpt = checkpoint.RoundCheckpoints(small_disk / "checkpoints", every=1, keep=2)
    small = collections.OrderedDict(weights=np.zeros(1000, np.float32))
    _save_state = asyncio.get_event_loop().run_until_complete
    _save_state(ckpt.save(small, 1))
    big = collections.OrderedDict(weights=np.zeros(1_000_000, np.float32))  # 4 MB: cannot fit
    with pytest.raises(checkpoint.CheckpointError, match=r"round 2 to .*the last one written is round 1"):
        _save_state(ckpt.save(big, 2))
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["program_state_1"]
