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

import hydra
from omegaconf import DictConfig

from fedlm.conf import composition, schema
from fedlm.conf.checks import check_bounds, check_model_file, check_prompt
from fedlm.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    """Checks on `python -m fedlm.generate`'s config that need nothing loaded."""
    check_bounds(cfg)  # the schema's ranges: length, num_samples, temperature, seeds
    check_prompt(cfg.prompt)
    given = {k: cfg[k] for k in ("run_id", "model_file") if cfg[k] is not None}
    if cfg.pretrained:
        given["pretrained"] = True
    if len(given) > 1:
        raise ConfigError(
            f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: give at most one of run_id=, "
            f"model_file=, pretrained=true (none = the latest run)"
        )
    check_model_file(cfg.model_file, "model_file", "or run_id= / pretrained=true")


def _run_model_file(cfg: DictConfig, dst: str) -> tuple[str, str]:
    """Download the Keras model of `run_id` (or of the latest finished run with one): (local path, description)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fedlm.tracking import store, tags

    uri = store.open_existing(cfg.mlflow.tracking_uri, " (or model_file=, pretrained=true)")
    client = mlflow.MlflowClient()
    if cfg.run_id is not None:
        try:
            run = client.get_run(str(cfg.run_id))
        except MlflowException as e:
            raise ConfigError(f"run_id={cfg.run_id!r}: no such run in {uri}") from e
        if tags.KERAS_MODEL not in run.data.tags:
            raise ConfigError(
                f"run_id={cfg.run_id!r}: the run (status {run.info.status}) has no final model; "
                f"allowed: a run that finished (or model_file=, pretrained=true)"
            )
    else:
        experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        runs = (
            []
            if experiment is None
            else client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{tags.KERAS_MODEL}` LIKE '%'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
        )
        if not runs:
            raise ConfigError(
                f"run_id=null (the latest run): no finished run with a model in experiment "
                f"mlflow.experiment_name={cfg.mlflow.experiment_name!r} at {uri}; run `python -m fedlm.run` first, "
                f"or give run_id=, model_file= or pretrained=true"
            )
        run = runs[0]
    artifact = run.data.tags[tags.KERAS_MODEL]
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact, dst_path=dst)
    return path, f"run {run.info.run_id} ({run.info.run_name}), {artifact}"


def _pretrained_model_file(cfg: DictConfig) -> tuple[str, str]:
    from fedlm.model import pretrain

    path = pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir)
    if not os.path.exists(path):
        raise ConfigError(
            f"pretrained=true: no pretrained model cached for model={cfg.model.name} pretrain.seed="
            f"{cfg.pretrain.seed} (looked for {path}); create it with `python -m fedlm.pretrain "
            f"model={cfg.model.name}` (plus the same pretrain.*/data.* overrides)"
        )
    try:
        pretrain.read_cached_model(path, cfg.model)
    except ValueError as e:
        raise ConfigError(
            f"pretrained=true: the cached pretrained model {path} is damaged ({e}); `python -m fedlm.pretrain "
            f"model={cfg.model.name}` (plus the same pretrain.*/data.* overrides) "
            "pretrains it again"
        ) from e
    return path, f"pretrained model {path}"


def generate(cfg: DictConfig) -> list[str]:
    """The texts `python -m fedlm.generate` prints (prompt + continuation, `num_samples` of them)."""
    validate(cfg)
    import numpy as np

    from fedlm.model import starting_weights
    from fedlm.model.generator import Generator

    with tempfile.TemporaryDirectory() as tmp:
        if cfg.model_file is not None:
            path, source = cfg.model_file, f"model file {cfg.model_file}"
            key = "model_file"
        elif cfg.pretrained:
            (path, source), key = _pretrained_model_file(cfg), "pretrained"
        else:
            (path, source), key = _run_model_file(cfg, tmp), "run_id"
        loaded = starting_weights.load_keras_file(path, key)
    for note in loaded.notes:
        print(f"fedlm.generate: {note}", file=sys.stderr)
    print(f"fedlm.generate: {source}; temperature {cfg.temperature}, seed {cfg.seed}", file=sys.stderr)
    generator = Generator(loaded.weights)
    rng = np.random.default_rng(cfg.seed)
    return [
        cfg.prompt + generator.sample(cfg.prompt, cfg.length, float(cfg.temperature), rng)
        for _ in range(cfg.num_samples)
    ]


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
def _main(cfg: DictConfig) -> None:
    try:
        texts = generate(cfg)
    except ConfigError as e:
        print(f"fedlm.generate: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}/{len(texts)}")
        print(text)


def main() -> None:
    schema.register()
    sys.argv = quote_free_text(sys.argv)
    composition.exit_on_bad_command_line("generate", sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
