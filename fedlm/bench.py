"""`python -m fedlm.bench`: the TFF tutorial's federated rounds against fedlm's, back to back on the same CPU.

    uv run python -m fedlm.bench                       # GRU 256 and GRU 1024, then RSS over 200 rounds (~4 min)
    uv run python -m fedlm.bench --quick               # GRU 256 only, then RSS over 50 rounds (~1 min)
    uv run python -m fedlm.bench --models reddi        # 2 x LSTM 256: FastLSTM against the stock LSTM
    uv run python -m fedlm.bench --models tutorial clients_per_round=4   # + Hydra overrides of fedlm's config

Per model size, three TFF federated-averaging processes run in the same process, each in a TFF worker of its own
(TFF's defaults for the tutorial's, fedlm's `runtime.max_concurrent_clients` for the others; all under the same
TensorFlow thread settings), with their rounds interleaved (tutorial round r, stock round r, fedlm round r, ...)
so that background load hits them alike:
- tutorial: the tutorial's path -- a stock `tf.keras.layers.GRU` model with Keras's initializers wrapped by
  `tff.learning.models.from_keras_model`, `tff.learning.algorithms.build_weighted_fed_avg` with TFF's defaults
  (a `dataset.reduce` client loop), client datasets built eagerly per client and round (`preprocess(
  client_data.create_tf_dataset_for_client(id))`);
- fedlm: what `python -m fedlm.run` does -- `model.gru` / `model.lstm` (FastGRU / FastLSTM by default), no
  random initializers in TFF's model copies, the dataset-iterator client loop, client datasets from the
  once-traced pipeline;
- stock: fedlm's path with the stock Keras layer (`model.gru=keras` / `model.lstm=keras`): fedlm / stock is what
  the fast layer alone gains (printed as "fast-layer ratio").
All start from the same weights and train on the same clients, the same batches (same seeds), with the same
loss, optimizers and weighting from fedlm's config (by default `experiment=tutorial`: 2 clients x 5 batches of
8 x 100 a round, client SGD 0.5, server SGD 1.0). So that every round does the same work, clients are sampled
(uniformly, seeded) among those with at least `max_batches_per_client` full batches.

Printed per model size and path (medians over the timed rounds; warm-up rounds excluded):
- round s: building the round's client datasets + `process.next`;
- tokens/s: characters trained on per second (clients x batches x batch_size x seq_length per round);
- GFLOP/s: matmul FLOPs per round / round s, with FLOPs per batch = 3 x 2 x B x T x (kH(E + H) + (N - 1) kH(2H)
  + H x V) for N layers of a cell with k gate blocks (GRU 3, LSTM 4): forward multiply-adds of the input and
  recurrent projections and the logits, x3 for the backward pass;
  % floor: that rate over the best large-matmul rate TF reaches on this machine (measured at start): how far
  the round is from the time its matmuls alone would take;
- TFF overhead: round s / the sum of the bare client steps (the same batches, each a `tf.function` step --
  forward, masked loss, gradient, SGD -- in this process, outside TFF);
- peak RSS and RSS growth over the timed rounds (this process + the path's TFF worker);
and where a round's time goes: building its client datasets (datasets s); the same round with empty client
datasets (no-data s: sending the state to TFF's worker and back, building and initializing each client's model,
aggregating); what is left, per batch (TFF step ms), against the bare step (bare step ms).
Then whether the results are the same: the largest difference between the two paths' weight updates (final -
start), relative to the largest update, and between their per-round training losses.
Finally RSS over `--memory-rounds` rounds of `model=tiny` on the fedlm path (TFF issues report memory growth
per round). Everything also goes to MLflow (experiment `benchmarks`, unless `--no-mlflow`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DEFAULT_OVERRIDES = ["experiment=tutorial"]


def compose(overrides: list[str]):
    """fedlm's config, composed as `python -m fedlm.run` would with these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from fedlm.conf import schema

    schema.register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return hydra_compose(config_name="config", overrides=overrides)


def load_average() -> float:
    """The 1-minute load average: timings taken while the machine is busy are noisy."""
    return float(open("/proc/loadavg").read().split()[0])


def child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def rss_mb(children: set[int] | None = None) -> float:
    """Resident memory of this process and of its child processes (TFF's workers; only `children` if given), MB."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        if children is not None and child.pid not in children:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


def step_flops(
    embedding_dim: int, units: int, vocab_size: int, batch: int, seq: int, gates: int = 3, layers: int = 1
) -> float:
    """Matmul FLOPs of one train step (forward + backward) of Embedding -> `layers` x GRU (3 gate blocks) or LSTM
    (4) -> Dense on a batch x seq batch."""
    recurrent = gates * units * (embedding_dim + units) + (layers - 1) * gates * units * 2 * units
    return 6.0 * batch * seq * (recurrent + units * vocab_size)


def matmul_peak_gflops() -> float:
    """The best rate TF reaches on large float32 matmuls here: the denominator of '% floor'."""
    import tensorflow as tf

    best = 0.0
    for n in (1024, 2048):
        a = tf.random.stateless_normal([n, n], seed=[0, n])
        matmul = tf.function(lambda a: tf.matmul(a, a))
        matmul(a).numpy()
        for _ in range(3):
            start = time.perf_counter()
            matmul(a).numpy()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


@dataclasses.dataclass
class Side:
    """One path through the benchmark: its process, state, dataset builder, bare train step and timings."""

    name: str
    process: Any
    state: Any
    datasets: Callable[[list[str], int], list]
    bare_step: Callable[[Any, Any], Any]
    round_s: list[float] = dataclasses.field(default_factory=list)
    dataset_s: list[float] = dataclasses.field(default_factory=list)
    bare_s: list[float] = dataclasses.field(default_factory=list)
    fixed_s: list[float] = dataclasses.field(default_factory=list)
    rss: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    context: Any = None  # its TFF execution context; None: the default one
    workers: set[int] = dataclasses.field(default_factory=set)  # the TFF worker processes it started

    def tff(self):
        """Where this side's TFF computations run."""
        import tensorflow_federated as tff

        return tff.framework.get_context_stack().install(self.context) if self.context else contextlib.nullcontext()


def build_side(name: str, cfg, client_data, start, context: Any = None) -> Side:
    """name "tutorial": the tutorial's path; "fedlm": fedlm's; "stock": fedlm's with the stock layer (see the module
    docstring); `context`: the TFF execution context it runs in (None: the default)."""
    import tensorflow as tf
    import tensorflow_federated as tff
    from hydra.utils import instantiate

    from fedlm import experiment
    from fedlm.conf import schema
    from fedlm.data import preprocessing
    from fedlm.fl import process as federated
    from fedlm.model import char_rnn as model_lib
    from fedlm.model import metrics

    sizes = model_lib.ModelSizes.of(cfg.model)
    tutorial = name == "tutorial"
    implementation = "keras" if name in ("tutorial", "stock") else schema.rnn_implementation(cfg.model)
    model_fn = federated.build_model_fn(lambda: sizes.build(implementation, random_init=tutorial), cfg.seq_length)
    client_optimizer, server_optimizer = instantiate(cfg.optimizer), instantiate(cfg.server_optimizer)
    if tutorial:  # as the tutorial calls it: TFF's defaults (examples weighting, mean, `dataset.reduce` loop)
        process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, client_optimizer, server_optimizer)
    else:
        process = experiment.build_learning_process(cfg, model_fn)  # exactly the process `fedlm.run` trains
    side = Side(name, process, None, lambda cids, seed: [], lambda x, y: None, context=context)
    before = child_pids()
    with side.tff():  # the first call starts the context's worker
        side.state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(start))
    side.workers = child_pids() - before
    shape = (cfg.seq_length, cfg.batch_size, cfg.shuffle_buffer)
    if tutorial:  # the tutorial: preprocess(client_data.create_tf_dataset_for_client(id)) per client

        def datasets(cids: list[str], seed: int) -> list:
            return [
                preprocessing.client_dataset(
                    client_data.create_tf_dataset_for_client(c),
                    *shape,
                    seed=seed,
                    local_epochs=cfg.local_epochs,
                    max_batches=cfg.max_batches_per_client,
                )
                for c in cids
            ]
    else:
        make = preprocessing.build_client_dataset_fn(client_data, *shape, cfg.local_epochs, cfg.max_batches_per_client)

        def datasets(cids: list[str], seed: int) -> list:
            return [make(c, seed) for c in cids]

    bare = sizes.build(implementation)
    bare.set_weights(start.get_weights())
    optimizer = tf.keras.optimizers.SGD(cfg.optimizer.learning_rate)
    loss_fn = metrics.MaskedCrossEntropy()
    spec = tf.TensorSpec([None, cfg.seq_length], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def bare_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, bare(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, bare.trainable_variables), bare.trainable_variables))
        return loss

    side.datasets, side.bare_step = datasets, bare_step
    return side


def eligible_clients(text_train: dict[str, list[str]], cfg) -> list[str]:
    """Clients with at least `max_batches_per_client` full batches, so that every round does the same work."""
    need = (cfg.max_batches_per_client or 1) * cfg.batch_size * (cfg.seq_length + 1)
    return sorted(c for c, speeches in text_train.items() if sum(len(s) + 1 for s in speeches) >= need * 1.1)


def size_label(cfg) -> tuple[str, str]:
    """How the report and MLflow name a model size: ("LSTM 256 x 2", "lstm256x2"); a GRU of one layer as before
    ("GRU 256", "gru256")."""
    cell, units, layers = cfg.model.cell.value, cfg.model.rnn_units, cfg.model.layers
    depth = (f" x {layers}", f"x{layers}") if layers > 1 else ("", "")
    return f"{cell.upper()} {units}{depth[0]}", f"{cell}{units}{depth[1]}"


def bench_size(
    cfg, text_train: dict[str, list[str]], client_data, rounds: int, warmup: int, concurrent: int = -1
) -> dict[str, Any]:
    """Interleaved tutorial/stock/fedlm rounds of one model size; returns the figures. `concurrent`: clients the
    stock side's TFF worker trains at once (fedlm's default context, installed by the caller, has its own)."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_federated as tff

    from fedlm.conf import schema
    from fedlm.fl.sampling import client_shuffle_seed
    from fedlm.model import char_rnn as model_lib
    from fedlm.vocab import VOCAB_SIZE

    tf.keras.utils.set_random_seed(cfg.seed)
    start = model_lib.build_configured(cfg.model)
    tf.random.set_seed(None)  # the tutorial's eager datasets shuffle by TF's global seed too: as in a fresh process
    t0 = time.perf_counter()
    # The tutorial's side in a context of its own with TFF's defaults (all of a round's clients at once); fedlm's
    # in the default context, installed by the caller with fedlm's `runtime.max_concurrent_clients`; the stock
    # layer's in one of its own with the same setting.
    tutorial_context = tff.backends.native.create_sync_local_cpp_execution_context()
    stock_context = tff.backends.native.create_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=concurrent
    )
    sides = [
        build_side("tutorial", cfg, client_data, start, tutorial_context),
        build_side("stock", cfg, client_data, start, stock_context),
        build_side("fedlm", cfg, client_data, start),
    ]
    build_s = time.perf_counter() - t0
    pool = eligible_clients(text_train, cfg)
    if len(pool) < cfg.clients_per_round:
        raise SystemExit(
            f"clients_per_round={cfg.clients_per_round}: only {len(pool)} clients have "
            f"max_batches_per_client={cfg.max_batches_per_client} full batches"
        )
    sample = tff.simulation.build_uniform_sampling_fn(pool, replace=False, random_seed=cfg.seed)
    loads = [load_average()]
    label, key = size_label(cfg)
    for r in range(warmup + rounds):
        cids, seed = sample(r, cfg.clients_per_round), client_shuffle_seed(cfg.seed, r)
        this_round = {}
        for side in sides:
            t0 = time.perf_counter()
            datasets = side.datasets(cids, seed)
            t1 = time.perf_counter()
            with side.tff():
                out = side.process.next(side.state, datasets)
            t2 = time.perf_counter()
            side.state = out.state
            side.losses.append(float(out.metrics["client_work"]["train"]["loss"]))
            this_round[side.name] = t2 - t0
            if r >= warmup:
                side.round_s.append(t2 - t0)
                side.dataset_s.append(t1 - t0)
                side.rss.append(rss_mb(side.workers))
        if r >= warmup:  # the same batches as bare steps, outside TFF
            batches = [(tf.constant(x), tf.constant(y)) for ds in datasets for x, y in ds.as_numpy_iterator()]
            for side in sides:
                side.bare_step(*batches[0]).numpy()  # traced and warm
                total = 0.0
                for x, y in batches:
                    t0 = time.perf_counter()
                    side.bare_step(x, y).numpy()
                    total += time.perf_counter() - t0
                side.bare_s.append(total)
            loads.append(load_average())
        phase = "warm-up" if r < warmup else "timed"
        print(
            f"  {label} round {r + 1}/{warmup + rounds} ({phase}): "
            + "  ".join(f"{name} {seconds:.2f}s" for name, seconds in this_round.items()),
            flush=True,
        )

    for r in range(warmup + rounds, warmup + rounds + 3):  # the same rounds without data: the fixed cost
        cids = sample(r, cfg.clients_per_round)
        for side in sides:
            t0 = time.perf_counter()
            with side.tff():
                side.process.next(side.state, [ds.take(0) for ds in side.datasets(cids, r)])  # result dropped
            side.fixed_s.append(time.perf_counter() - t0)

    n_batches = len(batches)
    tokens = n_batches * cfg.batch_size * cfg.seq_length
    gates = schema.RNN_GATES[cfg.model.cell.value]
    flops = n_batches * step_flops(
        cfg.model.embedding_dim,
        cfg.model.rnn_units,
        VOCAB_SIZE,
        cfg.batch_size,
        cfg.seq_length,
        gates,
        cfg.model.layers,
    )
    start_w = [np.asarray(w) for w in tff.learning.models.ModelWeights.from_model(start).trainable]
    updates = {}
    for s in sides:
        with s.tff():
            updates[s.name] = [
                np.asarray(w) - w0 for w, w0 in zip(s.process.get_model_weights(s.state).trainable, start_w)
            ]
    scale = max(float(np.abs(u).max()) for u in updates["tutorial"])
    weight_diff = max(
        float(np.abs(f - t).max()) for side in ("stock", "fedlm") for f, t in zip(updates[side], updates["tutorial"])
    )
    weight_diff /= scale
    loss_diff = max(abs(a - b) for side in sides[1:] for a, b in zip(sides[0].losses, side.losses))
    result: dict[str, Any] = {
        "label": label,
        "key": key,
        "layers": cfg.model.layers,
        "model": cfg.model.name,
        "embedding_dim": cfg.model.embedding_dim,
        "units": cfg.model.rnn_units,
        "clients": cfg.clients_per_round,
        "batches": n_batches,
        "flops": flops,
        "tokens": tokens,
        "weight_diff": weight_diff,
        "loss_diff": loss_diff,
        "build_s": build_s,
        "load_min": min(loads),
        "load_max": max(loads),
        "paths": {},
    }
    for side in sides:
        round_s, fixed_s = statistics.median(side.round_s), statistics.median(side.fixed_s)
        result["paths"][side.name] = {
            "round_s": round_s,
            "dataset_s": statistics.median(side.dataset_s),
            "bare_s": statistics.median(side.bare_s),
            "fixed_s": fixed_s,
            "tff_step_ms": (round_s - fixed_s) / n_batches * 1e3,
            "bare_step_ms": statistics.median(side.bare_s) / n_batches * 1e3,
            "tokens_per_s": tokens / round_s,
            "gflops": flops / round_s / 1e9,
            "tff_overhead": round_s / statistics.median(side.bare_s),
            "peak_rss_mb": max(side.rss),
            "rss_growth": side.rss[-1] / side.rss[0] - 1,
        }
    result["speedup"] = result["paths"]["tutorial"]["round_s"] / result["paths"]["fedlm"]["round_s"]
    result["fast_ratio"] = result["paths"]["stock"]["round_s"] / result["paths"]["fedlm"]["round_s"]
    result["fast_bare_ratio"] = result["paths"]["stock"]["bare_s"] / result["paths"]["fedlm"]["bare_s"]
    return result


def bench_memory(cfg, client_data, rounds: int, warmup: int = 5) -> dict[str, float]:
    """RSS over many rounds of a small model on the fedlm path."""
    import tensorflow as tf
    import tensorflow_federated as tff

    from fedlm.model import char_rnn as model_lib

    tf.keras.utils.set_random_seed(cfg.seed)
    start = model_lib.build_configured(cfg.model)
    side = build_side("fedlm", cfg, client_data, start)
    sample = tff.simulation.build_uniform_sampling_fn(client_data.client_ids, replace=False, random_seed=cfg.seed)
    rss, t0 = [], time.perf_counter()
    for r in range(warmup + rounds):
        side.state = side.process.next(side.state, side.datasets(sample(r, cfg.clients_per_round), r)).state
        if r >= warmup:
            rss.append(rss_mb())
        if (r + 1) % 50 == 0:
            print(f"  memory round {r + 1}/{warmup + rounds}: RSS {rss_mb():,.0f} MB", flush=True)
    return {
        "rounds": rounds,
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_peak_mb": max(rss),
        "rss_growth": rss[-1] / rss[0] - 1,
        "seconds_per_round": (time.perf_counter() - t0) / (warmup + rounds),
    }


def concurrent_text(concurrent: int) -> str:
    return "all clients at once" if concurrent < 0 else f"{concurrent} client{'s' if concurrent > 1 else ''} at once"


def format_report(results: list[dict[str, Any]], memory: dict[str, float] | None, settings: dict[str, Any]) -> str:
    lines = [
        f"fedlm.bench on {os.cpu_count()} CPUs, TF's default threads, TF large-matmul peak "
        f"{settings['peak_gflops']:.0f} GFLOP/s"
    ]
    for res in results:
        floor_s = res["flops"] / (settings["peak_gflops"] * 1e9)
        lines += [
            "",
            f"{res['label']} (model={res['model']}, embedding {res['embedding_dim']}): {res['clients']} clients, "
            f"{res['batches']} batches a round; fedlm, stock: {concurrent_text(res['concurrent_clients'])}, "
            f"tutorial: all at once (TFF's default); "
            f"load {res['load_min']:.1f}-{res['load_max']:.1f}; matmul floor {floor_s:.3f} s/round",
            f"{'path':<9} {'round s':>8} {'speedup':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'% floor':>8} "
            f"{'TFF overhead':>13} {'peak RSS MB':>12} {'RSS growth':>11} | {'datasets s':>10} {'no-data s':>10} "
            f"{'TFF step ms':>12} {'bare step ms':>13}",
        ]
        tutorial_s = res["paths"]["tutorial"]["round_s"]
        for name, p in res["paths"].items():
            lines.append(
                f"{name:<9} {p['round_s']:>8.3f} {tutorial_s / p['round_s']:>7.2f}x {p['tokens_per_s']:>9,.0f} "
                f"{p['gflops']:>8.1f} {p['gflops'] * 1e9 / settings['peak_gflops'] / 1e9:>7.0%} "
                f"{p['tff_overhead']:>12.2f}x {p['peak_rss_mb']:>12,.0f} {p['rss_growth']:>+10.1%} | "
                f"{p['dataset_s']:>10.3f} {p['fixed_s']:>10.3f} {p['tff_step_ms']:>12.1f} {p['bare_step_ms']:>13.1f}"
            )
        lines.append(
            f"fast-layer ratio (stock / fedlm, the same path with the stock layer): {res['fast_ratio']:.2f}x a round, "
            f"{res['fast_bare_ratio']:.2f}x the bare steps"
        )
        lines.append(
            f"same results: weight updates differ by {res['weight_diff']:.1e} of the largest update; "
            f"training losses by {res['loss_diff']:.1e}"
        )
    if memory:
        lines += [
            "",
            f"RSS over {memory['rounds']} rounds of model=tiny (fedlm path, after 5 warm-up rounds): "
            f"{memory['rss_first_mb']:,.0f} MB -> {memory['rss_last_mb']:,.0f} MB "
            f"({memory['rss_growth']:+.1%}), peak {memory['rss_peak_mb']:,.0f} MB, "
            f"{memory['seconds_per_round']:.2f} s/round",
        ]
    return "\n".join(lines)


def log_to_mlflow(cfg, results, memory, settings, report: str, argv: list[str]) -> None:
    import mlflow

    from fedlm.tracking import store, tags  # its store builders keep alembic's migration lines off the console

    mlflow.set_tracking_uri(store.tracking_uri_or_default(cfg.mlflow.tracking_uri))
    store.get_or_create_experiment("benchmarks")
    with mlflow.start_run(run_name="bench " + " ".join(argv), tags={tags.GIT_COMMIT: store.git_commit()}):
        mlflow.log_params({k: str(v) for k, v in settings.items()} | {"argv": " ".join(argv)})
        metrics = {}
        for res in results:
            key = res["key"]
            metrics |= {
                f"{key}_speedup": res["speedup"],
                f"{key}_fast_ratio": res["fast_ratio"],
                f"{key}_fast_bare_ratio": res["fast_bare_ratio"],
                f"{key}_weight_diff": res["weight_diff"],
                f"{key}_load_max": res["load_max"],
                f"{key}_concurrent_clients": res["concurrent_clients"],
            }
            for name, p in res["paths"].items():
                metrics |= {f"{key}_{name}_{k}": float(v) for k, v in p.items()}
        if memory:
            metrics |= {f"memory_{k}": float(v) for k, v in memory.items()}
        mlflow.log_metrics(metrics)
        mlflow.log_text(report, "bench.txt")


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m fedlm.bench",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of fedlm's config (default experiment=tutorial)")
    parser.add_argument("--models", nargs="+", default=None, help="conf/model names (default: small tutorial)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per size (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--memory-rounds", type=int, default=None, help="rounds of model=tiny for RSS (default 200)")
    parser.add_argument("--quick", action="store_true", help="model small only, RSS over 50 rounds")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    args = parser.parse_args(argv)
    models = args.models or (["small"] if args.quick else ["small", "tutorial"])
    rounds = args.rounds or 5
    memory_rounds = args.memory_rounds if args.memory_rounds is not None else (50 if args.quick else 200)

    from fedlm.conf import checks, schema
    from fedlm.fl import runtime

    overrides = [*DEFAULT_OVERRIDES, *args.overrides]
    cfgs = [compose([*overrides, f"model={m}"]) for m in models]
    memory_cfg = compose([*overrides, "model=tiny"])
    for cfg in [*cfgs, memory_cfg]:
        checks.validate(cfg)
        tutorials = {
            "client_weighting": schema.NumExamplesWeighting,
            "algorithm": schema.FedAvg,
            "aggregator": schema.MeanAggregator,
        }
        for group, option in tutorials.items():
            if (chosen := schema.option_type(cfg[group])) is not option:  # the tutorial's side could not match it
                raise SystemExit(
                    f"fedlm.bench: {group}={schema.choice_name(chosen)}: the benchmark compares with "
                    f"the tutorial's FedAvg, which needs {group}={schema.choice_name(option)}"
                )
    cfg0 = cfgs[0]

    from fedlm.data import client_data as client_data_lib
    from fedlm.data import shakespeare

    settings = {
        "peak_gflops": matmul_peak_gflops(),
        "overrides": " ".join(overrides),
        "rounds": rounds,
        "warmup": args.warmup,
        "load_at_start": load_average(),
    }
    print(
        f"fedlm.bench: models {models}, {rounds} timed rounds after {args.warmup} warm-up, overrides {overrides}; "
        f"load {settings['load_at_start']:.2f}",
        flush=True,
    )
    from hydra.utils import instantiate

    partition = instantiate(cfg0.partition)(seed=cfg0.seed)  # as `python -m fedlm.run` deals the clients
    text = shakespeare.load_federated_text(
        cfg0.data.proxy_genres, cfg0.data.test_fraction, cfg0.seed, cfg0.cache_dir, partition
    )
    client_data = client_data_lib.to_client_data(text.train)
    results, memory = [], None
    for cfg in cfgs:  # a TFF worker per size: the default clients at once depends on the size
        concurrent = runtime.concurrent_clients(
            cfg.runtime.max_concurrent_clients, schema.recurrent_kernel_bytes(cfg.model)
        )
        with runtime.tff_context(concurrent, private_local_worker=cfg.runtime.private_local_worker):
            results.append(
                bench_size(cfg, text.train, client_data, rounds, args.warmup, concurrent)
                | {"concurrent_clients": concurrent}
            )
    if memory_rounds:
        with runtime.tff_context(
            runtime.concurrent_clients(
                memory_cfg.runtime.max_concurrent_clients, schema.recurrent_kernel_bytes(memory_cfg.model)
            )
        ):
            memory = bench_memory(memory_cfg, client_data, memory_rounds)
    settings["peak_gflops"] = max(settings["peak_gflops"], matmul_peak_gflops())  # less hostage to a busy moment
    report = format_report(results, memory, settings)
    print("\n" + report, flush=True)
    if not args.no_mlflow:
        log_to_mlflow(cfg0, results, memory, settings, report, argv)


if __name__ == "__main__":
    main()
