"""Bad input (data, training, MLflow, disk): each gets a clear message naming key/file, value and what is allowed,
before work is lost. One test per row of the README's table (the rows owned here)."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedlm import vocab
from fedlm.conf import preflight
from fedlm.data import shakespeare
from fedlm.errors import ConfigError
from tests.conftest import TINY, compose_config, run_fedlm

# --- data ---------------------------------------------------------------------------------------------------


def test_a_role_without_speech_is_no_client_and_is_reported():
    plays = [shakespeare.Play("A Play", "comedies", [("KENT", "I thought so."), ("KENT", "Yes."), ("GHOST", "")])]
    text = shakespeare.build_federated_text(plays, [], 0.5, seed=0)
    assert text.empty_clients == ["A_PLAY_GHOST"]
    assert "A_PLAY_GHOST" not in text.train and "A_PLAY_GHOST" not in text.test
    assert text.stats()["data_empty_clients"] == 1 and text.stats()["data_clients"] == 1


def test_characters_outside_the_vocabulary_are_counted_never_remapped():
    plays = [shakespeare.Play("A Play", "comedies", [("KENT", "Caf\u00e9 \u2014 caf\u00e9"), ("KENT", "ok")])]
    text = shakespeare.build_federated_text(plays, [], 0.0, seed=0)
    assert text.oov_characters == {"\u00e9": 2, "\u2014": 1}
    assert text.stats()["data_oov_chars"] == 3
    ids = vocab.encode("Caf\u00e9")
    assert ids[-1] == vocab.OOV_ID and vocab.decode(ids) == "Caf\ufffd"  # OOV, not another character


@pytest.mark.parametrize(
    "content, problem", [(b"", "is empty"), (b"To be", "only 5 characters"), (b"\xff\xfe not utf-8", "not UTF-8")]
)
def test_unusable_pretraining_corpus_is_refused_naming_the_file(tmp_path, content, problem):
    from fedlm.model import pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    cfg = compose_config([*TINY, f"pretrain.corpus={corpus}"])
    with pytest.raises(ConfigError, match=rf"pretrain\.corpus='{corpus}': .*{problem}"):
        pretrain.corpus_text(cfg.pretrain, cfg.data.proxy_genres)


# --- training -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metrics, what",
    [
        ({"client_work": {"train": {"loss": np.float32("nan"), "num_batches": 4}}}, "train_loss is nan"),
        ({"evaluation/loss": float("inf")}, "eval_loss is inf"),
        ({"client_work": {"train": {"loss": 0.0, "num_batches": 0}}}, "every sampled client's update was NaN/Inf"),
        # optimizer.learning_rate=1e6: a finite loss whose perplexity overflows
        (
            {"client_work": {"train": {"loss": np.float32(636198.1), "num_batches": 4}}},
            "train_loss is 636198, its perplexity inf",
        ),
        ({"evaluation/cross_entropy": 800.0}, "eval_cross_entropy is 800, its perplexity inf"),
    ],
)
def test_divergence_check_names_the_round(metrics, what):
    import asyncio

    from fedlm.fl.loop import Diverged, DivergenceCheck

    with pytest.raises(Diverged, match=f"diverged at round 7: {what}"):
        asyncio.get_event_loop().run_until_complete(DivergenceCheck().release(metrics, key=7))
    # a healthy round passes
    healthy = {"client_work": {"train": {"loss": 1.5, "num_batches": 4}}, "evaluation/loss": 1.6}
    asyncio.get_event_loop().run_until_complete(DivergenceCheck().release(healthy, key=7))


# --- MLflow ---------------------------------------------------------------------------------------------------


def test_unreachable_tracking_server_fails_fast_naming_the_uri():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=rf"mlflow.tracking_uri.*'{uri}': MLflow tracking server unreachable"):
        preflight.check_tracking_store(uri)


def test_sqlite_store_in_an_unwritable_directory_is_refused():
    with pytest.raises(ConfigError, match=r"sqlite:////proc/fedlm/mlflow.db.*cannot write there"):
        preflight.check_tracking_store("sqlite:////proc/fedlm/mlflow.db")  # /proc: read-only, even for root


@pytest.mark.e2e
def test_a_local_store_is_refused_when_the_launcher_runs_jobs_on_other_machines(tmp_path):
    """`hydra/launcher=submitit_slurm`: each node would write its own copy of the store (or lock a shared file);
    refused in the launching process, before any job is submitted. (A `file:` store is refused the same way.)"""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_fedlm(["-m", "hydra/launcher=submitit_slurm", "seed=0,1", f"mlflow.tracking_uri={uri}"], tmp_path)
    assert result.returncode == 2, result.stdout[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("fedlm: config error:")]
    assert f"={uri!r}: a local store, but hydra/launcher (SlurmLauncher) runs the jobs on other machines" in line
    assert "http://" in line and "postgresql://" in line
    assert "Traceback" not in result.stdout and not (tmp_path / "sweep" / ".submitit").exists()


# --- disk -------------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_unwritable_hydra_run_dir_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_fedlm([*TINY], tmp_path, run_dir="a_file/run")  # a directory inside a file
    assert result.returncode == 2
    assert f"hydra.run.dir='{blocker}/run': cannot write there" in result.stdout
    assert "Traceback" not in result.stdout and "round 0" not in result.stdout


def test_unwritable_cache_dir_fails_before_pretraining(capsys):
    from fedlm.model import pretrain

    cfg = compose_config([*TINY, "cache_dir=/proc/fedlm-cache"])
    with pytest.raises(ConfigError, match=r"cache_dir \(pretrained models\)='/proc/fedlm-cache/pretrained'"):
        pretrain.pretrained_model_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir)
    assert "pretraining" not in capsys.readouterr().out


@pytest.mark.e2e
def test_damaged_caches_are_named_and_rebuilt_by_a_run(tmp_path):
    """A truncated data cache and a pretrained model of random bytes: every run failed, with a traceback that did not
    name the data file, and with `model.init=<cache path>` for the model although model.init was never set."""
    from fedlm.model import pretrain

    cache = tmp_path / "cache"
    cfg = compose_config([*TINY, f"cache_dir={cache}"])
    shakespeare.load_federated_text(cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed, str(cache))
    (data_file,) = (cache / "data").iterdir()
    data_file.write_bytes(data_file.read_bytes()[:1000])
    model_file = Path(pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, str(cache)))
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_fedlm([*TINY, f"cache_dir={cache}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"fedlm: data cache {data_file} is damaged (not valid JSON" in result.stdout
    assert f"fedlm: cached pretrained model {model_file} is damaged (" in result.stdout
    assert "Traceback" not in result.stdout and "model.init" not in result.stdout
    pretrain.read_cached_model(str(model_file), cfg.model)  # both rebuilt
    assert json.loads(data_file.read_text())["train"]


def test_damaged_pretrained_model_in_a_read_only_cache_is_refused_naming_it(tmp_path, monkeypatch):
    from fedlm.model import pretrain

    cfg = compose_config([*TINY, f"cache_dir={tmp_path}"])
    model_file = Path(pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, str(tmp_path)))
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root writes anywhere: the probe says read-only
    with pytest.raises(
        ConfigError,
        match=rf"cache_dir \(pretrained models\)='{model_file.parent}': the cached "
        rf"pretrained model {model_file} is damaged \(.*\) and cannot be replaced "
        r"there \(Read-only file system\); set cache_dir= ",
    ):
        pretrain.load_pretrained(cfg.model, cfg.pretrain, cfg.data.proxy_genres, str(tmp_path))


def test_generating_from_a_damaged_pretrained_model_names_it_and_the_remedy(tmp_path):
    from fedlm import generate
    from fedlm.model import pretrain

    cfg = compose_config(["pretrained=true", f"cache_dir={tmp_path}"], config_name="generate")
    model_file = Path(pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, str(tmp_path)))
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"\x89HDF\r\n")  # a copy cut short
    with pytest.raises(
        ConfigError,
        match=rf"pretrained=true: the cached pretrained model {model_file} is damaged "
        r"\(.*\); `python -m fedlm.pretrain model=small` \(plus",
    ):
        generate.generate(cfg)


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    need = preflight.run_dir_bytes_needed(model_bytes=2**20, checkpoint_keep=2)
    with pytest.raises(
        ConfigError,
        match=r"run directory='.*': 1.0 MiB free on its disk, but this run needs about "
        r"10.0 MiB \(2 checkpoints",
    ):
        preflight.check_free_space(tmp_path, need, "run directory", "2 checkpoints and the final model")


def test_checkpoint_that_cannot_be_written_names_round_directory_and_last_kept(tmp_path):
    import asyncio
    import collections

    from fedlm.fl.checkpoint import CheckpointError, RoundCheckpoints

    directory = tmp_path / "checkpoints"
    checkpoints = RoundCheckpoints(directory, every=1, keep=2)
    state = collections.OrderedDict(weights=np.ones(3, np.float32))
    loop = asyncio.get_event_loop()
    loop.run_until_complete(checkpoints.save(state, 0))
    shutil.rmtree(directory)
    directory.write_text("")  # the disk is gone from under the run: a file where the directory was
    with pytest.raises(CheckpointError, match=rf"round 1 to {directory}: .*the last one written is round 0"):
        loop.run_until_complete(checkpoints.save(state, 1))


def test_no_space_left_on_writing_is_refused(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(ConfigError, match=r"cache_dir='.*': cannot write there \(No space left on device\)"):
        preflight.check_writable_dir(tmp_path, "cache_dir")


@pytest.mark.e2e
def test_a_new_run_in_another_runs_directory_is_refused_before_anything_is_written(tmp_path):
    """Hydra writes its record (.hydra/) before fedlm runs: a second run there would overwrite the first's."""
    record = tmp_path / "run" / ".hydra"
    record.mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (record / name).write_text(f"the first run's {name}\n")
    result = run_fedlm([*TINY], tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    assert f"hydra.run.dir='{tmp_path / 'run'}': already holds another run" in result.stdout
    assert "pretraining" not in result.stdout  # refused before any work
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (record / name).read_text() == f"the first run's {name}\n"


def test_default_run_directories_of_the_same_second_differ():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        dirs = {compose(config_name="config", return_hydra_config=True).hydra.run.dir for _ in range(3)}
    assert len(dirs) == 3


def test_a_database_store_without_its_driver_is_refused_naming_the_package():
    """PostgreSQL's driver is a dependency (psycopg2-binary); MySQL's is not."""
    with pytest.raises(
        ConfigError,
        match=r"mlflow.tracking_uri \(or \$MLFLOW_TRACKING_URI\)='mysql://fedlm:\*\*\*@"
        r"db/runs': the database driver 'MySQLdb' is not installed; .*"
        r"uv add mysqlclient",
    ):
        preflight.check_tracking_store("mysql://fedlm:secret@db/runs")
    preflight.check_tracking_store("postgresql://fedlm:secret@db/runs")  # the driver is there: nothing to refuse


def test_a_deleted_experiment_is_refused_before_any_work(tmp_path):
    import mlflow

    from fedlm.tracking import store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.delete_experiment(mlflow.create_experiment("gone"))
    with pytest.raises(
        ConfigError,
        match=r"mlflow.experiment_name='gone': that experiment is deleted in .*"
        r"mlflow experiments restore --experiment-id",
    ):
        store.connect(uri, "gone")
    assert store.connect(uri, "fresh") == uri
