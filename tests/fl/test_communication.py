"""The communication ledger (fl/communication.py): the bytes read from the TFF computations a run executes equal
an independent count from the model's weights and from the quantization encoder's own output."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

from fedlm import experiment
from fedlm.fl import communication, runtime
from fedlm.fl import process as fl_process
from fedlm.model import char_rnn
from tests.conftest import compose_config

CLIENTS = 3


@pytest.fixture(scope="module", autouse=True)
def tff_context():
    with runtime.tff_context():
        yield


def ledger_of(sizes: tuple[int, int], overrides: list[str]) -> tuple[communication.Ledger, tf.keras.Model]:
    def keras_model() -> tf.keras.Model:
        return char_rnn.build_model(*sizes)

    cfg = compose_config([f"clients_per_round={CLIENTS}", *overrides])
    model_fn = fl_process.build_model_fn(keras_model, 6)
    process, aggregator = experiment.build_learning_process_and_aggregator(cfg, model_fn)
    return communication.build_ledger(process, aggregator, lambda r: CLIENTS), keras_model()


def quantized_bytes(weight: np.ndarray) -> int:
    """The bytes TFF's 8-bit quantization encoder emits for `weight`, encoding it here, outside TFF."""
    spec = tf.TensorSpec(weight.shape, tf.float32)
    encoder = te.encoders.as_gather_encoder(te.encoders.uniform_quantization(8), spec)
    params, _, _ = encoder.get_params(encoder.initial_state())
    encoded, _ = encoder.encode(tf.constant(weight), params)
    return sum(np.asarray(t).nbytes for t in tf.nest.flatten(encoded))


def test_the_mean_sends_every_weight_as_float32_both_ways():
    ledger, model = ledger_of((8, 16), ["aggregator=mean"])
    weights = sum(w.size for w in model.get_weights())
    # down: the model weights, and the client learning rate TFF broadcasts; up: the update and its weight
    assert ledger.down_per_client == 4 * weights + 4
    assert ledger.up_per_client == 4 * weights + 4
    assert ledger.metrics(2) == {
        "comm_down_bytes": CLIENTS * ledger.down_per_client,
        "comm_up_bytes": CLIENTS * ledger.up_per_client,
        "comm_total_bytes": 2 * CLIENTS * (ledger.down_per_client + ledger.up_per_client),
    }


def test_compression_uploads_what_its_encoder_emits():
    # GRU 96: its recurrent kernel (96 x 288) is above TFF's 20,000-element threshold, so it is quantized
    ledger, model = ledger_of(
        (8, 96), ["aggregator=compression", "aggregator.zeroing=false", "aggregator.clipping=false"]
    )
    weights = model.get_weights()
    large = [w for w in weights if w.size > 20_000]
    assert len(large) == 1
    expected = sum(quantized_bytes(w) if w.size > 20_000 else w.nbytes for w in weights) + 4  # + the float32 weight
    assert ledger.up_per_client == expected
    # 8 bits a weight, bit-packed in int32 words of 28 bits (2/7 of float32), with the tensor's range
    assert ledger.up_per_client - 4 - sum(w.nbytes for w in weights if w.size <= 20_000) < 0.3 * large[0].nbytes
    assert ledger.down_per_client == sum(w.nbytes for w in weights) + 4  # the model goes down uncompressed


def test_the_totals_are_a_function_of_the_round():
    ledger = communication.Ledger(10, 3, lambda r: r)  # round r samples r clients
    assert ledger.metrics(0) == {"comm_down_bytes": 0, "comm_up_bytes": 0, "comm_total_bytes": 0}
    assert ledger.metrics(3) == {"comm_down_bytes": 30, "comm_up_bytes": 9, "comm_total_bytes": 13 * (1 + 2 + 3)}


def test_mime_lite_clients_send_their_update_and_their_full_gradient():
    """MimeLite aggregates two things a client sends (its model update and its full-batch gradient at the server
    model, each weighted); the server broadcasts the model and its optimizer's state (SGD momentum: one more copy)."""
    ledger, model = ledger_of((8, 16), ["algorithm=mime_lite", "optimizer=sgdm"])
    weights = sum(w.size for w in model.get_weights())
    assert ledger.up_per_client == 2 * (4 * weights + 4)
    assert ledger.down_per_client >= 2 * 4 * weights


def test_dropped_clients_were_sent_the_model_and_sent_nothing_back():
    ledger = communication.Ledger(10, 3, lambda r: 5, lambda r: r)  # 5 sampled, r of them report
    assert ledger.metrics(2) == {"comm_down_bytes": 50, "comm_up_bytes": 6, "comm_total_bytes": 50 + 3 + 50 + 6}
