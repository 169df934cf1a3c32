"""`runtime.workers`: the learning process run on two `python -m fedlm.worker` processes (TFF's mergeable context)
equals the same process on the local worker, and each worker trains its slice of the round's clients; the
addresses are checked before TensorFlow."""

from __future__ import annotations

import socket

import numpy as np
import psutil
import pytest
import tensorflow as tf

from fedlm import experiment, vocab
from fedlm.conf import workers as worker_addresses
from fedlm.errors import ConfigError
from fedlm.fl import process as fl_process
from fedlm.fl import runtime
from fedlm.model import char_rnn
from tests import remote_workers
from tests.conftest import compose_config

SEQ = 6
CLIENTS = 4  # two slices of two: a worker's slice is a partial aggregate that the context merges
# The tolerances (measured with TFF 0.87 on 127.0.0.1): weights and metrics 1.5e-8, perplexity 4e-5.
WEIGHTS_TOLERANCE, METRICS_TOLERANCE, PERPLEXITY_TOLERANCE = 1.5e-8, 1.5e-8, 4e-5


def keras_model() -> tf.keras.Model:
    return char_rnn.build_model(4, 8)


def clients() -> list[tf.data.Dataset]:
    rng = np.random.default_rng(0)
    datasets = []
    for sequences in (3, 1, 2, 4):  # unequal sizes: a slice's weight is its clients' examples
        x = rng.integers(0, vocab.PAD_ID, (sequences, SEQ)).astype(np.int32)
        y = rng.integers(0, vocab.PAD_ID, (sequences, SEQ)).astype(np.int32)
        datasets.append(tf.data.Dataset.from_tensor_slices((x, y)).batch(2))
    return datasets


def two_rounds(overrides: list[str]) -> tuple[list[np.ndarray], list[dict]]:
    """Final trainable weights and each round's train metrics, in whatever TFF context is installed."""
    import tensorflow_federated as tff

    cfg = compose_config(["optimizer.learning_rate=0.5", f"clients_per_round={CLIENTS}", *overrides])
    process = experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))
    tf.keras.utils.set_random_seed(0)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(keras_model()))
    metrics = []
    for _ in range(2):
        output = process.next(state, clients())
        state = output.state
        metrics.append(dict(output.metrics["client_work"]["train"]))
    return [np.asarray(w) for w in process.get_model_weights(state).trainable], metrics


@pytest.mark.e2e  # starts two fedlm.worker processes
def test_two_workers_train_as_the_local_worker_each_its_slice(tmp_path):
    # Not the default aggregator: compression's quantization is where rounding in a merge would show.
    overrides = ["aggregator=compression", "client_weighting=num_tokens"]
    with runtime.tff_context():
        local_weights, local_metrics = two_rounds(overrides)
    with remote_workers.workers(2, tmp_path) as nodes, runtime.tff_context(workers=[n.address for n in nodes]):
        remote_weights, remote_metrics = two_rounds(overrides)
        slices = runtime.client_slices()
    assert slices == {n.address: [CLIENTS // 2] for n in nodes}  # each its half of the clients, executor reused
    largest = max(np.max(np.abs(w)) for w in local_weights)
    weight_diff = max(np.max(np.abs(a - b)) for a, b in zip(local_weights, remote_weights))
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(local_metrics, remote_metrics))
    print(f"2 workers vs local: weights differ by {weight_diff:.2g} (largest {largest:.3g}), loss by {loss_diff:.2g}")
    # The merge adds the slices' partial sums in another order: at most a float32 rounding step of the largest weight
    # (measured: 1.5e-8, the figure, one step of the weights near 0.2).
    assert weight_diff <= max(WEIGHTS_TOLERANCE, float(np.spacing(np.float32(largest)))), (weight_diff, largest)
    for local, remote in zip(local_metrics, remote_metrics):
        assert local["num_examples"] == remote["num_examples"] and local["num_batches"] == remote["num_batches"]
        for name in ("loss", "accuracy"):
            assert remote[name] == pytest.approx(local[name], rel=METRICS_TOLERANCE, abs=METRICS_TOLERANCE)
        assert np.exp(remote["loss"]) == pytest.approx(np.exp(local["loss"]), rel=PERPLEXITY_TOLERANCE)


def test_worker_addresses_are_checked_and_every_unreachable_one_is_named():
    with socket.socket() as listening:  # a port that answers, and two that do not
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = f"127.0.0.1:{listening.getsockname()[1]}"
        down = [f"127.0.0.1:{remote_workers.free_port()}", f"[::1]:{remote_workers.free_port()}"]
        worker_addresses.check_workers([up])
        with pytest.raises(ConfigError) as error:
            worker_addresses.check_workers([up, *down])
    message = str(error.value)
    assert message.startswith("runtime.workers: 2 of 3 unreachable")
    assert all(f"{d}: Connection refused" in message for d in down) and up not in message
    for bad in ("node1", "node1:", ":8000", "node1:http", "node1:70000"):
        with pytest.raises(ConfigError, match=f"runtime.workers: '{bad}' is no worker address"):
            worker_addresses.check_workers([bad])
    with pytest.raises(ConfigError, match="given twice"):
        worker_addresses.check_workers([up, up])


def listening_beyond_loopback(processes: list[psutil.Process]) -> list[str]:
    """What `processes` listen on in this network namespace other than loopback, and which of their ports answer on
    this host's other addresses (a socket in another namespace is not in this one's tables, so both are asked)."""
    found, ports = [], set()
    for p in processes:
        ports |= {int(a.split("=", 1)[1]) for a in p.cmdline() if a.startswith("--port=")}
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and not (c.laddr.ip.startswith("127.") or c.laddr.ip == "::1"):
                found.append(f"{p.name()} listens on {c.laddr.ip}:{c.laddr.port}")
    addresses = [
        a.address
        for nic in psutil.net_if_addrs().values()
        for a in nic
        if a.family in (socket.AF_INET, socket.AF_INET6)
        and not a.address.startswith(("127.", "::1", "fe80"))  # link-local needs a scope: not routable anyway
    ]
    for address in addresses:
        for port in ports:
            if worker_addresses.why_unreachable(f"[{address}]:{port}", timeout=1.0) is None:
                found.append(f"port {port} answers on {address}")
    return found


def worker_tree() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "worker_binary" or "python" in p.name()]


def test_the_local_worker_is_reachable_from_no_other_host():
    import tensorflow_federated as tff

    with runtime.tff_context():

        @tff.tensorflow.computation(tf.int32)
        def add_one(x):
            return x + 1

        assert add_one(41) == 42  # the worker ran it: it is up, and fedlm reaches it
        processes = worker_tree()
        assert any(p.name() == "worker_binary" for p in processes)
        assert listening_beyond_loopback(processes) == []
