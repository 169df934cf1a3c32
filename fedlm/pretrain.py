"""Central pretraining on public text: the starting model that federated training fine-tunes (cached)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import hydra
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from fedlm import config as config_lib
from fedlm import data as data_lib
from fedlm import model as model_lib
from fedlm import preflight, vocab


class _Progress(tf.keras.callbacks.Callback):
    """A line every `log_every` steps with loss, accuracy, steps/s and ETA."""

    def __init__(self, total_steps: int, log_every: int):
        super().__init__()
        self.total, self.every, self.t0 = total_steps, log_every, time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every == 0 or step == self.total:
            rate = step / (time.monotonic() - self.t0)
            print(f"pretrain step {step}/{self.total}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
                  f"{rate:.1f} steps/s  ETA {(self.total - step) / rate:.0f}s", flush=True)


def corpus_text(cfg: DictConfig) -> str:
    """The pretraining text: `pretrain.corpus` (UTF-8) or the proxy plays; at least one training sequence long."""
    if cfg.pretrain.corpus is not None:
        source = f"pretrain.corpus={cfg.pretrain.corpus!r}"
        try:
            with open(cfg.pretrain.corpus, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise config_lib.ConfigError(f"{source}: not UTF-8 text ({e}); convert it to UTF-8") from e
    else:
        genres = set(cfg.data.proxy_genres)
        text = "\n".join(s for p in data_lib.load_plays() if p.genre in genres for _, s in p.speeches)
        source = f"data.proxy_genres={sorted(genres)}"
    need = cfg.pretrain.seq_length + 1
    if len(text) < need:
        what = "empty" if not text else f"only {len(text)} characters"
        raise config_lib.ConfigError(f"{source}: the pretraining corpus is {what}; it needs at least "
                                     f"pretrain.seq_length + 1 = {need} characters")
    return text


def cache_path(cfg: DictConfig) -> str:
    """Where the pretrained model for this model + pretraining + corpus config is cached."""
    key = {
        "model": {k: cfg.model[k] for k in ("embedding_dim", "rnn_units")},
        "pretrain": OmegaConf.to_container(cfg.pretrain, resolve=True),
        "proxy_genres": list(cfg.data.proxy_genres),
        "vocab": vocab.VOCAB_SIZE,
        "seed": cfg.seed,
    }
    if cfg.pretrain.corpus is not None:
        key["corpus_mtime"] = os.path.getmtime(cfg.pretrain.corpus)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cfg.cache_dir, "pretrained", f"{cfg.model.name}-{digest}.h5")


def pretrain(cfg: DictConfig) -> tf.keras.Model:
    """Train the configured model centrally on the corpus, with progress lines."""
    tf.keras.utils.set_random_seed(cfg.seed)
    text = corpus_text(cfg)
    ids = vocab.encode(text)
    n = cfg.pretrain.seq_length + 1
    seqs = ids[: len(ids) // n * n].reshape(-1, n)
    print(f"pretraining {cfg.model.name} on {len(ids):,} characters ({int(np.sum(ids == vocab.OOV_ID))} OOV, "
          f"excluded from the loss: {vocab.unknown_chars(text)}) for {cfg.pretrain.steps} steps of "
          f"{cfg.pretrain.batch_size}x{cfg.pretrain.seq_length}", flush=True)
    ds = (tf.data.Dataset.from_tensor_slices(seqs).shuffle(len(seqs), seed=cfg.seed).repeat()
          .batch(cfg.pretrain.batch_size).map(lambda s: (s[:, :-1], s[:, 1:])).prefetch(2))
    model = model_lib.build_model(cfg.model.embedding_dim, cfg.model.rnn_units, cfg.model.gru.value)
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.pretrain.learning_rate),
                  loss=model_lib.MaskedCrossEntropy(), metrics=[model_lib.MaskedAccuracy()])
    model.fit(ds, steps_per_epoch=cfg.pretrain.steps, epochs=1, verbose=0,
              callbacks=[_Progress(cfg.pretrain.steps, cfg.pretrain.log_every)])
    return model


def pretrained_model_path(cfg: DictConfig) -> str:
    """`model.init` if given, else the cached pretrained model, pretraining it first if missing."""
    if cfg.model.init is not None:
        return cfg.model.init
    path = cache_path(cfg)
    if os.path.exists(path):
        print(f"using cached pretrained model {path}", flush=True)
        return path
    # Before pretraining, not after it:
    preflight.check_writable_dir(os.path.dirname(path), "cache_dir (pretrained models)")
    t0 = time.monotonic()
    model = pretrain(cfg)
    tmp = path + ".tmp.h5"  # write then rename: a killed pretraining leaves no half file behind
    model_lib.save_model(model, tmp)
    os.replace(tmp, path)
    print(f"pretrained in {time.monotonic() - t0:.0f}s, cached at {path}", flush=True)
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """`python -m fedlm.pretrain [pretrain.corpus=path.txt] [model=...]`: build (or reuse) the pretrained model."""
    try:
        config_lib.validate(cfg)
        print(pretrained_model_path(cfg))
    except config_lib.ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
