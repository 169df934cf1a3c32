import pytest
from hydra.errors import ConfigCompositionException

from fedlm import config as config_lib
from tests.conftest import compose_config


def test_default_config_is_valid():
    cfg = compose_config()
    config_lib.validate(cfg)
    assert cfg.model.rnn_units == 256 and cfg.optimizer._target_.endswith("build_sgdm")


def test_tutorial_model_and_experiment_compose():
    cfg = compose_config(["model=tutorial", "experiment=tutorial"])
    assert cfg.model.rnn_units == 1024
    assert cfg.rounds == 5 and cfg.clients_per_round == 2 and cfg.max_batches_per_client == 5


@pytest.mark.parametrize(
    "override, key",
    [
        ("rounds=-1", "rounds"),
        ("rounds=0", "rounds"),
        ("seq_length=0", "seq_length"),
        ("clients_per_round=1.5", "clients_per_round"),
        ("client_weighting=foo", "client_weighting"),
        ("optimizer.learning_rate=0", "optimizer.learning_rate"),
        ("server_optimizer.learning_rate=-1", "server_optimizer.learning_rate"),
        ("model.init=/nonexistent/model.h5", "model.init"),
        ("pretrain.corpus=/nonexistent.txt", "pretrain.corpus"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(compose_config([override]))


def test_unknown_optimizer_is_rejected_at_composition():
    with pytest.raises(ConfigCompositionException, match="optimizer"):
        compose_config(["optimizer=foo"])


def test_clients_per_round_above_population():
    cfg = compose_config(["clients_per_round=5000"])
    with pytest.raises(config_lib.ConfigError, match="clients_per_round=5000"):
        config_lib.check_population(cfg, 898)


@pytest.mark.parametrize("group", ["optimizer", "server_optimizer"])
@pytest.mark.parametrize("name", ["sgd", "sgdm", "adam", "adamw", "adagrad", "yogi", "rmsprop", "adafactor"])
def test_every_tff_optimizer_instantiates(group, name):
    import tensorflow_federated as tff
    from hydra.utils import instantiate

    cfg = compose_config([f"{group}={name}"])
    config_lib.validate(cfg)
    assert isinstance(instantiate(cfg[group]), tff.learning.optimizers.Optimizer)


def test_hyperparameter_of_another_optimizer_is_rejected():
    with pytest.raises(ConfigCompositionException, match="momentum"):
        compose_config(["optimizer=adam", "optimizer.momentum=0.9"])
