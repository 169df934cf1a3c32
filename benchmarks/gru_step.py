"""Micro-benchmark: one SGD train step of Embedding(88, 256) -> GRU(H) -> Dense(88), stock vs fedlm FastGRU
(`--cell lstm`: LSTM(H), stock vs FastLSTM).

    uv run python benchmarks/gru_step.py [--cell gru] [--units 256 1024] [--batch 8] [--seq 100] [--steps 20]

Each step is a `tf.function` (no XLA): forward, cross-entropy, gradients, SGD update. Reported: the median
wall time over `--steps` after `--warmup` untimed steps (stock and fast interleaved, so background load hits
both alike), and the matmul throughput it implies:

    FLOPs/step = 3 * 2 * B * T * (kH * (E + H) + H * V),   k = 3 gate blocks for the GRU, 4 for the LSTM

i.e. forward multiply-adds of the input projection (E x kH), recurrent projection (H x kH) and the Dense
logits (H x V), times 3 for forward + backward (the backward pass does two matmuls per forward one: inputs and
weights). Elementwise gate math, embedding lookup and softmax are not counted. Both layers do the same matmul
work, so the GFLOP/s columns compare like with like. Figures only; nothing is asserted. The stock layer
depends much more on oneDNN (on by default; `TF_ENABLE_ONEDNN_OPTS=0` makes it several times slower).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fedlm.model.char_rnn import build_recurrent  # noqa: E402

VOCAB, EMBED = 88, 256


def train_step(units: int, implementation: str, batch: int, seq: int, cell: str = "gru") -> Callable[[], None]:
    """One SGD step of the char-RNN with the given GRU / LSTM implementation, on a fixed random batch."""
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(None,), dtype=tf.int32),
            tf.keras.layers.Embedding(VOCAB, EMBED),
            build_recurrent(units, implementation, cell),
            tf.keras.layers.Dense(VOCAB),
        ]
    )
    optimizer = tf.keras.optimizers.SGD(0.01)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    x, y = (tf.constant(rng.integers(0, VOCAB, (batch, seq)), tf.int32) for _ in range(2))
    return lambda: step(x, y).numpy()  # .numpy() waits for the step to finish


def median_seconds(steps: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, float]:
    """Median time of each step function; runs are interleaved so background load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", choices=["gru", "lstm"], default="gru")
    parser.add_argument("--units", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    print(f"batch {args.batch} x seq {args.seq}, Embedding({VOCAB},{EMBED}); median of {args.steps} steps")
    print(f"{'units':>6} {'stock ms':>9} {'fast ms':>8} {'speedup':>8} {'stock GFLOP/s':>14} {'fast GFLOP/s':>13}")
    for units in args.units:
        gates = {"gru": 3, "lstm": 4}[args.cell]
        flops = 6 * args.batch * args.seq * (gates * units * (EMBED + units) + units * VOCAB)
        steps = {impl: train_step(units, impl, args.batch, args.seq, args.cell) for impl in ("keras", "fast")}
        stock, fast = median_seconds(steps, args.steps, args.warmup).values()
        print(
            f"{units:>6} {stock * 1e3:>9.1f} {fast * 1e3:>8.1f} {stock / fast:>7.2f}x "
            f"{flops / stock / 1e9:>14.1f} {flops / fast / 1e9:>13.1f}"
        )


if __name__ == "__main__":
    main()
