"""`python -m fedlm.generate` and the Generator behind it."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm import generate, vocab
from fedlm.errors import ConfigError
from fedlm.model import char_rnn, generator
from tests.conftest import TINY_RUN_EXPERIMENT, compose_config, run_fedlm


def _generator() -> generator.Generator:
    m = char_rnn.build_model(4, 8)
    return generator.Generator(m.get_weights()), m


def test_greedy_is_the_argmax_of_the_full_model():
    gen, m = _generator()
    text = gen.sample("Hi ", 12, 0.0, rng=None)  # greedy needs no randomness
    ids = list(vocab.encode("Hi "))
    for c in text:  # each character is the argmax (over real characters) of the non-stateful model on all so far
        assert vocab.CHAR_TO_ID[c] == int(np.argmax(m(np.array([ids]))[0, -1, : vocab.PAD_ID]))
        ids.append(vocab.CHAR_TO_ID[c])
    assert gen.sample("Hi ", 12, 0.0, rng=None) == text  # the state was reset between samples


def test_sampling_is_seeded_and_temperature_sharpens():
    gen, _ = _generator()
    a = gen.sample("Hi ", 40, 1.0, np.random.default_rng(7))
    assert a == gen.sample("Hi ", 40, 1.0, np.random.default_rng(7))
    assert a != gen.sample("Hi ", 40, 1.0, np.random.default_rng(8))
    greedy = gen.sample("Hi ", 40, 0.0, None)
    cold = gen.sample("Hi ", 40, 1e-9, np.random.default_rng(7))
    assert cold == greedy  # temperature -> 0 approaches greedy decoding


@pytest.mark.parametrize(
    "override, message",
    [
        ("temperature=-1", r"temperature=-1.0: must be >= 0"),
        ("seed=-2", r"seed=-2: must be >= 0"),
        ("length=0", r"length=0: must be >= 1"),
        ("num_samples=0", r"num_samples=0: must be >= 1"),
        ("prompt='café'", r"prompt='café': characters outside the vocabulary: \['é'\]"),
        ("prompt=''", r"prompt='': must be a non-empty string"),
        ("model_file=/no/such/model.h5", r"model_file='/no/such/model.h5': no such file"),
        (
            "mlflow.tracking_uri=sqlite:////no/such/mlflow.db",
            r"mlflow.tracking_uri='sqlite:////no/such/mlflow.db': no such "
            r"store \(no file /no/such/mlflow.db\)",
        ),
        ("run_id=abc", r"run_id='abc': no such run in sqlite:///"),
        (
            "mlflow.experiment_name=nothing_yet",
            r"run_id=null \(the latest run\): no finished run with a model in "
            r"experiment mlflow.experiment_name='nothing_yet'",
        ),
        ("pretrained=true", r"pretrained=true: no pretrained model cached for model=small"),
    ],
)
def test_bad_inputs_name_key_value_and_what_is_allowed(override, message):
    import mlflow

    mlflow.MlflowClient().search_experiments()  # the tests' store exists (a mistyped one is another case above)
    with pytest.raises(ConfigError, match=message):
        generate.generate(compose_config([override, "cache_dir=/nonexistent"], config_name="generate"))


@pytest.mark.parametrize(
    "text",
    [
        "What of TensorFlow Federated, you ask? ",
        "It's [a] {b} = c, d",
        "back\\slash \\",
        "x\\'y",
        "${x} $y",
        '"quoted", he said',
    ],
)
def test_prompt_is_taken_literally_from_the_command_line(text):
    (arg,) = generate.quote_free_text([f"prompt={text}"])
    assert compose_config([arg], config_name="generate").prompt == text
    assert generate.quote_free_text(["prompt='a, b'", "length=3"]) == ["prompt='a, b'", "length=3"]


def test_wrong_types_fail_at_composition_naming_the_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="length"):
        compose_config(["length=long"], config_name="generate")


def test_two_sources_are_rejected():
    with pytest.raises(ConfigError, match=r"run_id='x', pretrained=True: give at most one of"):
        generate.validate(compose_config(["run_id=x", "pretrained=true"], config_name="generate"))


@pytest.mark.e2e
def test_cli_prints_text_from_a_run(tiny_run_id, tmp_path):
    """The issue's command, on the session's tiny run; then the same run as 'the latest' gives the same text."""
    args = [f"run_id={tiny_run_id}", f"prompt={generator.TUTORIAL_PROMPT}", "length=50"]  # as the shell passes
    # `prompt="What of TensorFlow Federated, you ask? "`: unquoted for Hydra, with a comma
    result = run_fedlm(args, tmp_path, module="fedlm.generate")
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"run {tiny_run_id}" in result.stdout
    assert not any((tmp_path / "run").glob("**/*"))  # generating writes nothing (no .hydra/, no log file)
    (latest,) = generate.generate(
        compose_config([f"mlflow.experiment_name={TINY_RUN_EXPERIMENT}", "length=50"], config_name="generate")
    )
    assert latest.startswith(generator.TUTORIAL_PROMPT) and len(latest) == len(generator.TUTORIAL_PROMPT) + 50
    assert latest.replace("\r", "\n") in result.stdout  # the CLI printed it (read in text mode: \r -> \n), and
    # the latest run is that run
