"""Bad input (data, training, MLflow, disk): each gets a clear message naming key/file, value and what is allowed,
before work is lost. One test per row of the README's table (the rows owned here)."""
from __future__ import annotations

import errno
import shutil
import socket
import tempfile

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


@pytest.mark.parametrize("content, problem", [(b"", "is empty"), (b"To be", "only 5 characters"),
                                              (b"\xff\xfe not utf-8", "not UTF-8")])
def test_unusable_pretraining_corpus_is_refused_naming_the_file(tmp_path, content, problem):
    from fedlm.model import pretrain

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    cfg = compose_config([*TINY, f"pretrain.corpus={corpus}"])
    with pytest.raises(ConfigError, match=rf"pretrain\.corpus='{corpus}': .*{problem}"):
        pretrain.corpus_text(cfg.pretrain, cfg.data.proxy_genres)


# --- training -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metrics, what", [
    ({"client_work": {"train": {"loss": np.float32("nan"), "num_batches": 4}}}, "train_loss is nan"),
    ({"evaluation/loss": float("inf")}, "eval_loss is inf"),
    ({"client_work": {"train": {"loss": 0.0, "num_batches": 0}}}, "every sampled client's update was NaN/Inf"),
    # optimizer.learning_rate=1e6: a finite loss whose perplexity overflows
    ({"client_work": {"train": {"loss": np.float32(636198.1), "num_batches": 4}}}, "train_loss is 636198, its perplexity inf"),
    ({"evaluation/cross_entropy": 800.0}, "eval_cross_entropy is 800, its perplexity inf"),
])
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


# --- disk -------------------------------------------------------------------------------------------------------

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
        pretrain.pretrained_model_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.seed, cfg.cache_dir)
    assert "pretraining" not in capsys.readouterr().out


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=2**20))
    need = preflight.run_dir_bytes_needed(model_bytes=2**20, checkpoint_keep=2)
    with pytest.raises(ConfigError, match=r"run directory='.*': 1.0 MiB free on its disk, but this run needs about "
                                          r"10.0 MiB \(2 checkpoints"):
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
