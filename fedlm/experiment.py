"""The experiment a config describes, built from its options: the starting weights, the learning process, the client
selection and the evaluation. Shared by `fedlm.run` and `fedlm.bench`, so the benchmark times the process a run
trains, not one built its own way.

Every group option is instantiated here and called with what only the run knows (lightning-hydra-template's
instantiate-from-config, Flower's `instantiate(cfg.strategy, evaluate_fn=...)`): the builders live with their
layer (fedlm/fl/, fedlm/data/), the YAML files under conf/<group>/ say which one and with which keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedlm.conf import checks, schema
from fedlm.data import preprocessing
from fedlm.errors import ConfigError
from fedlm.fl import (
    algorithms,
    communication,
    evaluation,
    loop,
    optimizers,
    participation,
    privacy,
    process,
    sampling,
    schedules,
)
from fedlm.model import char_rnn, pretrain, starting_weights


def build_starting_weights(cfg: DictConfig) -> tuple[str, starting_weights.InitialWeights]:
    """The file the run starts from (`model.init`, or the cached pretrained model, pretrained first if missing or
    damaged) and its weights, checked to fit the configured model (ConfigError if not)."""
    return pretrain.load_pretrained(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir, seed=cfg.seed)


def build_keras_model_fn(model: DictConfig) -> Callable[[], tf.keras.Model]:
    """Fresh copies of the configured char-RNN, for TFF and evaluation. Every copy gets its weights from the start
    file or the server state, so no random initialization: TFF rebuilds the model for every client of every round,
    where a GRU(1024)'s initializers alone take ~0.8 s."""
    return lambda: char_rnn.build_configured(model, random_init=False)


def build_schedules(cfg: DictConfig) -> tuple[schedules.Schedule, schedules.Schedule]:
    """The client's and the server's learning rate of each round: `schedule=` and `server_schedule=` over the
    optimizers' learning rates."""
    return (
        instantiate(cfg.schedule)(learning_rate=cfg.optimizer.learning_rate),
        instantiate(cfg.server_schedule)(learning_rate=cfg.server_optimizer.learning_rate),
    )


def build_learning_process(
    cfg: DictConfig, model_fn: process.ModelFn, ledger: privacy.Ledger | None = None
) -> tff.learning.templates.LearningProcess:
    """The learning process of `build_learning_process_and_aggregator`."""
    return build_learning_process_and_aggregator(cfg, model_fn, ledger)[0]


def build_learning_process_and_aggregator(
    cfg: DictConfig, model_fn: process.ModelFn, ledger: privacy.Ledger | None = None
) -> tuple[tff.learning.templates.LearningProcess, Any]:
    """`algorithm=` over `client_weighting=`, `aggregator=`, `optimizer=`, `server_optimizer=` and their
    `schedule=`, `server_schedule=`; with aggregator=dp's `ledger`, its noise multiplier (calibrated to
    `aggregator.target_epsilon`, or the configured one). With it, the aggregator factory, which remembers the
    aggregation process TFF created from it (for the communication ledger)."""
    try:
        client_optimizer, server_optimizer = instantiate(cfg.optimizer), instantiate(cfg.server_optimizer)
    except Exception as e:
        raise ConfigError(
            f"optimizer/server_optimizer: cannot build from {dict(cfg.optimizer)} / {dict(cfg.server_optimizer)}: {e}"
        ) from e
    client_schedule, server_schedule = build_schedules(cfg)
    client_optimizer = optimizers.client_optimizer(client_optimizer, client_schedule, cfg.rounds)
    server_optimizer = optimizers.server_optimizer(server_optimizer, server_schedule, cfg.rounds)
    weighting = instantiate(cfg.client_weighting)(model_fn=model_fn)
    noise = {} if ledger is None else {"noise_multiplier": ledger.mechanism.noise_multiplier}
    weighted = weighting.weighting is not None
    aggregator = communication.recording(
        instantiate(cfg.aggregator, **noise)(weighted=weighted, clients_per_round=cfg.clients_per_round, seed=cfg.seed),
        weighted,
    )
    learning_process = instantiate(cfg.algorithm)(
        weighting=weighting, client_optimizer=client_optimizer, server_optimizer=server_optimizer, aggregator=aggregator
    )
    return learning_process, aggregator


def start_process(cfg: DictConfig, learning_process: Any, start_model: tf.keras.Model) -> Any:
    """The learning process, started from the model's weights; with a server schedule, its rounds report the server's
    learning rate (the client work reports the client's itself, but for MimeLite's)."""
    start = process.StartFrom(learning_process, tff.learning.models.ModelWeights.from_model(start_model))
    client_schedule, server_schedule = build_schedules(cfg)
    if schema.option_type(cfg.algorithm) is schema.MimeLite and not client_schedule.constant:
        start = algorithms.MimeLiteClientRate(start)  # TFF's scheduled MimeLite does not report its rate
    return start if server_schedule.constant else optimizers.ServerLearningRate(start)


def build_client_data(cfg: DictConfig, source: Any) -> tuple[Any, Any]:
    """Train and test `ClientData` of the data source; a population known only now (TFF's download) is checked."""
    train_data, test_data = source.client_data
    if source.population is None:
        checks.check_population(cfg, train_data.client_ids, len(test_data.client_ids))
    return train_data, test_data


def build_privacy_ledger(
    cfg: DictConfig, population: int, calibrated_noise: float | None = None
) -> privacy.Ledger | None:
    """aggregator=dp's privacy ledger (fedlm/fl/privacy.py) for the `population` training clients, None for other
    aggregators: its noise calibrated to `aggregator.target_epsilon` (or kept: `calibrated_noise`, a resumed run's),
    or the rounds the budget allows. ConfigError if the budget cannot be met, or allows no round."""
    if schema.option_type(cfg.aggregator) is not schema.DpAggregator:
        return None
    dp: schema.DpAggregator = OmegaConf.to_object(cfg.aggregator)
    sampling_ = schema.option_type(cfg.sampling).privacy_sampling
    mechanism = privacy.Mechanism(
        dp.noise_multiplier, cfg.clients_per_round, population, sampling_, dp.poisson_approximation
    )
    budget = f"aggregator.target_epsilon={dp.target_epsilon:g}" if dp.target_epsilon is not None else ""
    try:
        ledger = privacy.build_ledger(
            mechanism, cfg.rounds, dp.delta, dp.accountant.value, dp.target_epsilon, dp.calibrates, calibrated_noise
        )
    except privacy.BudgetError as e:
        raise ConfigError(f"{budget}: {e}; allow a larger epsilon, more clients_per_round or fewer rounds") from e
    if ledger.rounds == 0:
        raise ConfigError(
            f"{budget}: a single round spends epsilon {ledger.epsilon(1):.4g} with aggregator.noise_multiplier="
            f"{dp.noise_multiplier:g}; allow a larger epsilon or more noise"
        )
    return ledger


def build_client_sampler(cfg: DictConfig, source: Any, train_data: Any) -> sampling.ClientSampler:
    """`sampling=`, drawing `clients_per_round` clients, and `participation.over_select` more."""
    drawn = cfg.clients_per_round + cfg.participation.over_select
    population = sampling.Population(train_data.client_ids, drawn, cfg.seed, source.client_sizes)
    return instantiate(cfg.sampling)(population=population)


def build_participation(cfg: DictConfig, sampler: sampling.ClientSampler) -> participation.Participation | None:
    """`participation=` over the sampler; None if its keys change nothing (every sampled client reports, in full)."""
    keys = {k: cfg.participation[k] for k in ("dropout", "over_select", "straggler_fraction", "straggler_work")}
    if participation.is_reliable(**keys):
        return None
    return instantiate(cfg.participation)(sampler=sampler, clients_per_round=cfg.clients_per_round, seed=cfg.seed)


def build_client_datasets(cfg: DictConfig, train_data: Any) -> Callable[[str, int], tf.data.Dataset]:
    """(client id, round) -> that client's training batches in that round: shuffled by (seed, round) only."""
    make = preprocessing.build_client_dataset_fn(
        train_data, cfg.seq_length, cfg.batch_size, cfg.shuffle_buffer, cfg.local_epochs, cfg.max_batches_per_client
    )
    return lambda cid, round_num: make(cid, sampling.client_shuffle_seed(cfg.seed, round_num))


def build_evaluation(
    cfg: DictConfig,
    learning_process: tff.learning.templates.LearningProcess,
    model_fn: process.ModelFn,
    keras_model_fn: Callable[[], tf.keras.Model],
    test_data: Any,
) -> evaluation.Evaluation:
    """`eval=` on the fixed, seeded `eval_clients` clients' test splits."""
    ids = evaluation.pick_eval_clients(test_data.client_ids, cfg.eval_clients, cfg.seed)
    clients = evaluation.EvalClients(test_data, ids, cfg.seq_length, cfg.eval_batch_size)
    return instantiate(cfg.eval)(
        process=learning_process, model_fn=model_fn, keras_model_fn=keras_model_fn, clients=clients
    )


@dataclasses.dataclass
class Experiment:
    """What the round loop needs, built; `process` remembers the latest server state (for text samples)."""

    learning_process: tff.learning.templates.LearningProcess
    process: loop.LatestState
    sampler: sampling.ClientSampler  # round -> the clients that train in it
    select_clients: Callable[[int], list[tf.data.Dataset]]
    evaluation: evaluation.Evaluation
    privacy: privacy.Ledger | None  # aggregator=dp's; None for other aggregators
    rounds: int  # the rounds to train: the configured ones, or those aggregator.target_epsilon allows
    communication: communication.Ledger | None = None  # the bytes of each round


def build_experiment(
    cfg: DictConfig,
    source: Any,
    start_weights: list,
    on_step: Callable[[str], None],
    calibrated_noise: float | None = None,
) -> Experiment:
    """The whole experiment from the config, the data source and the starting weights. `on_step(name)` is called
    after each costly step (the startup line's laps). Runs inside a TFF execution context. `calibrated_noise`: a
    resumed DP run's calibrated noise multiplier (build_privacy_ledger)."""
    keras_model_fn = build_keras_model_fn(cfg.model)
    start_model = keras_model_fn()
    start_model.set_weights(start_weights)
    train_data, test_data = build_client_data(cfg, source)
    on_step("client data")
    ledger = build_privacy_ledger(cfg, len(train_data.client_ids), calibrated_noise)
    model_fn = process.build_model_fn(keras_model_fn, cfg.seq_length)
    learning_process, aggregator = build_learning_process_and_aggregator(cfg, model_fn, ledger)
    start = start_process(cfg, learning_process, start_model)
    on_step("TFF process")
    sampler = build_client_sampler(cfg, source, train_data)
    make_dataset = build_client_datasets(cfg, train_data)
    # the bytes each round moves: the process's broadcasts to the sampled clients, its aggregator's uploads from
    # those that report (all of them, unless participation= drops some)
    sampled, reporting = (lambda r: len(sampler(r))), None
    if (participation_ := build_participation(cfg, sampler)) is not None:
        start = loop.ParticipationRounds(start, participation_, make_dataset)
        sampler, select = (lambda r: participation_(r).reporting), start.select  # the clients that train
        sampled = lambda r: len(participation_(r).sampled)  # noqa: E731
        reporting = lambda r: len(participation_(r).reporting)  # noqa: E731
    else:
        select = loop.build_client_selection(sampler, make_dataset)
    comm = communication.build_ledger(learning_process, aggregator, sampled, reporting)
    evaluation_ = build_evaluation(cfg, learning_process, model_fn, keras_model_fn, test_data)
    on_step("eval data")
    return Experiment(
        learning_process,
        loop.LatestState(start),
        sampler,
        select,
        evaluation_,
        ledger,
        ledger.rounds if ledger else cfg.rounds,
        comm,
    )
