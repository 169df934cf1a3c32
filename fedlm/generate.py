"""Text generation: the tutorial's `generate_text` on a batch-1 stateful copy of a trained model.

`python -m fedlm.generate [run_id=… | model_file=… | pretrained=true] [prompt=…] [length=…] [temperature=…]
[seed=…] [num_samples=…]` prints text from the model of an MLflow run (the latest finished one by default), a
Keras file (fedlm's or the TFF tutorial's published format) or the cached pretrained model. Temperature 0 is
greedy decoding. Padding and OOV are never generated.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any

import hydra
from omegaconf import DictConfig

from fedlm import vocab
from fedlm.config import ConfigError, check_bounds

TUTORIAL_PROMPT = "What of TensorFlow Federated, you ask? "
KERAS_MODEL_TAG = "fedlm.keras_model"  # a run's tag: the artifact path of its final Keras model file


def check_prompt(prompt: Any, key: str = "prompt") -> None:
    """A prompt must be a non-empty string of vocabulary characters."""
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f"{key}={prompt!r}: must be a non-empty string (the text to continue)")
    if unknown := vocab.unknown_chars(prompt):
        raise ConfigError(f"{key}={prompt!r}: characters outside the vocabulary: {unknown}; allowed: the "
                          f"tutorial's {len(vocab.TUTORIAL_CHARS)} characters {''.join(vocab.TUTORIAL_CHARS)!r}")


def check_temperature(value: Any, key: str = "temperature") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{key}={value!r}: must be a number >= 0 (0 = greedy, 1 = the model's distribution)")


def _positive_int(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: must be an integer >= 1")


class Generator:
    """A batch-1 stateful copy of a char-RNN that continues prompts one character at a time."""

    def __init__(self, weights: Any):
        """weights: a list of arrays in Keras order, or TFF `ModelWeights` (sizes read from their shapes)."""
        import tensorflow as tf

        from fedlm import model as model_lib

        arrays = list(weights.trainable) if hasattr(weights, "trainable") else weights
        embedding_dim, rnn_units = arrays[0].shape[1], arrays[2].shape[0]  # Embedding (V, E), GRU kernel (H, 3H)
        self.model = model_lib.build_model(embedding_dim, rnn_units, batch_size=1, stateful=True)
        self.set_weights(weights)

        @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32)])
        def next_logits(ids):  # logits of the next character, over the real characters only (no PAD, OOV)
            return self.model(ids)[0, -1, : vocab.PAD_ID]

        self._next_logits = next_logits

    def set_weights(self, weights: Any) -> None:
        """A list of arrays (Keras order) or TFF `ModelWeights`."""
        if hasattr(weights, "assign_weights_to"):
            weights.assign_weights_to(self.model)
        else:
            self.model.set_weights(weights)

    def sample(self, prompt: str, length: int, temperature: float, rng) -> str:
        """The `length` characters after `prompt` (not including it); rng: a `numpy.random.Generator`."""
        import numpy as np

        check_prompt(prompt)
        self.model.reset_states()
        ids = np.asarray([vocab.encode(prompt)], np.int32)
        out = []
        for _ in range(length):
            logits = self._next_logits(ids).numpy().astype(np.float64)
            if temperature == 0:
                nxt = int(np.argmax(logits))
            else:  # Gumbel-max: an exact draw from softmax(logits / temperature)
                nxt = int(np.argmax(logits / temperature + rng.gumbel(size=logits.shape)))
            out.append(nxt)
            ids = np.asarray([[nxt]], np.int32)
        return vocab.decode(out)


def generate_text(trained, prompt: str = TUTORIAL_PROMPT, length: int = 200, temperature: float = 1.0,
                  seed: int = 0) -> str:
    """The tutorial's `generate_text(model, start_string)`: prompt + `length` sampled characters."""
    import numpy as np

    check_prompt(prompt)
    return prompt + Generator(trained.get_weights()).sample(prompt, length, temperature, np.random.default_rng(seed))


def validate(cfg: DictConfig) -> None:
    """Checks on `python -m fedlm.generate`'s config that need nothing loaded."""
    check_prompt(cfg.prompt)
    check_temperature(cfg.temperature)
    _positive_int(cfg.length, "length")
    _positive_int(cfg.num_samples, "num_samples")
    check_bounds(cfg)  # the rest of the schema's ranges (seed, pretrained_seed)
    given = {k: cfg[k] for k in ("run_id", "model_file") if cfg[k] is not None}
    if cfg.pretrained:
        given["pretrained"] = True
    if len(given) > 1:
        raise ConfigError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: give at most one of run_id=, "
                          f"model_file=, pretrained=true (none = the latest run)")
    if cfg.model_file is not None and not os.path.exists(cfg.model_file):
        raise ConfigError(f"model_file={cfg.model_file!r}: no such file (a Keras model file)")


def _run_model_file(cfg: DictConfig, dst: str) -> tuple[str, str]:
    """Download the Keras model of `run_id` (or of the latest finished run with one): (local path, description)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fedlm import tracking

    uri = tracking.tracking_uri_or_default(cfg.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if cfg.run_id is not None:
        try:
            run = client.get_run(str(cfg.run_id))
        except MlflowException as e:
            raise ConfigError(f"run_id={cfg.run_id!r}: no such run in {uri}") from e
        if KERAS_MODEL_TAG not in run.data.tags:
            raise ConfigError(f"run_id={cfg.run_id!r}: the run (status {run.info.status}) has no final model; "
                              f"allowed: a run that finished (or model_file=, pretrained=true)")
    else:
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        runs = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{KERAS_MODEL_TAG}` LIKE '%'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if not runs:
            raise ConfigError(
                f"run_id=null (the latest run): no finished run with a model in experiment "
                f"mlflow.experiment_name={cfg.mlflow.experiment_name!r} at {uri}; run `python -m fedlm.run` first, "
                f"or give run_id=, model_file= or pretrained=true"
            )
        run = runs[0]
    artifact = run.data.tags[KERAS_MODEL_TAG]
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact, dst_path=dst)
    return path, f"run {run.info.run_id} ({run.info.run_name}), {artifact}"


def _pretrained_model_file(cfg: DictConfig) -> tuple[str, str]:
    from omegaconf import OmegaConf

    from fedlm import pretrain

    run_cfg = OmegaConf.merge(cfg, {"seed": cfg.pretrained_seed})  # the pretraining seed, not the sampling one
    path = pretrain.cache_path(run_cfg)
    if not os.path.exists(path):
        raise ConfigError(
            f"pretrained=true: no pretrained model cached for model={cfg.model.name} pretrained_seed="
            f"{cfg.pretrained_seed} (looked for {path}); create it with `python -m fedlm.pretrain "
            f"model={cfg.model.name} seed={cfg.pretrained_seed}` (plus the same pretrain.*/data.* overrides)"
        )
    return path, f"pretrained model {path}"


def generate(cfg: DictConfig) -> list[str]:
    """The texts `python -m fedlm.generate` prints (prompt + continuation, `num_samples` of them)."""
    validate(cfg)
    import numpy as np

    from fedlm import model_init

    with tempfile.TemporaryDirectory() as tmp:
        if cfg.model_file is not None:
            path, source = cfg.model_file, f"model file {cfg.model_file}"
            key = "model_file"
        elif cfg.pretrained:
            (path, source), key = _pretrained_model_file(cfg), "pretrained"
        else:
            (path, source), key = _run_model_file(cfg, tmp), "run_id"
        loaded = model_init.load_keras_file(path, key)
    for note in loaded.notes:
        print(f"fedlm.generate: {note}", file=sys.stderr)
    print(f"fedlm.generate: {source}; temperature {cfg.temperature}, seed {cfg.seed}", file=sys.stderr)
    generator = Generator(loaded.weights)
    rng = np.random.default_rng(cfg.seed)
    return [cfg.prompt + generator.sample(cfg.prompt, cfg.length, float(cfg.temperature), rng)
            for _ in range(cfg.num_samples)]


def quote_free_text(argv: list[str], key: str = "prompt") -> list[str]:
    """`prompt=<any text>` -> a Hydra-quoted override, so a shell-quoted prompt with commas, brackets, quotes or
    `${` (Hydra's override grammar) is taken literally: `prompt="What of TensorFlow Federated, you ask? "`.
    A value the user already quoted for Hydra (`prompt="'…'"`) is left alone."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if name == key and eq and not quoted:
            value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # Hydra: \ before a quote or the end
            value = value.replace("'", "\\'").replace("${", "\\${")  # a literal quote; no OmegaConf interpolation
            arg = f"{name}='{value}'"
        out.append(arg)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        texts = generate(cfg)
    except ConfigError as e:
        print(f"fedlm.generate: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(text)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)
    main()
