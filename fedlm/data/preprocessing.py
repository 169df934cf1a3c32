"""Snippets -> ids -> padded (input, target) sequences -> batches, as in the tutorial but padded, not dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from fedlm.vocab import CHAR_TO_ID, OOV_ID, PAD_ID

# The graph-level half of the shuffle seed (TF's default when no global seed is set): fixed, so that a client's
# batches depend on the shuffle seed given, not on whether something set `tf.random.set_seed` earlier.
_GRAPH_SEED = 87654321


def _lookup_table() -> tf.lookup.StaticHashTable:
    chars = list(CHAR_TO_ID)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(chars, [CHAR_TO_ID[c] for c in chars], tf.string, tf.int32),
        default_value=OOV_ID,  # the tutorial's default 0 would silently turn unknown characters into 'd'
    )


def to_sequences(
    snippets: tf.data.Dataset, seq_length: int, table: tf.lookup.StaticHashTable | None = None
) -> tf.data.Dataset:
    """OrderedDict(snippets=str) -> (input, target) int32 pairs of length seq_length; the last one tail-padded.

    A last chunk of a single character is dropped: an input without a target, it would still count as an example
    (TFF's `num_examples`, a client's weight) and in the loss means, which weight each batch's loss by its sequences
    (alone in a batch, a loss of 0)."""
    table = table or _lookup_table()

    def pad_split(chunk: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        chunk = tf.pad(chunk, [[0, seq_length + 1 - tf.shape(chunk)[0]]], constant_values=PAD_ID)
        chunk = tf.ensure_shape(chunk, [seq_length + 1])
        return chunk[:-1], chunk[1:]

    return (
        snippets.map(lambda x: table.lookup(tf.strings.unicode_split(x["snippets"], "UTF-8")))
        .unbatch()
        .batch(seq_length + 1)
        .filter(lambda chunk: tf.shape(chunk)[0] > 1)
        .map(pad_split)
    )


def client_dataset(
    snippets: tf.data.Dataset,
    seq_length: int,
    batch_size: int,
    shuffle_buffer: int,
    seed: int,
    local_epochs: int = 1,
    max_batches: int | None = None,
    table: tf.lookup.StaticHashTable | None = None,
) -> tf.data.Dataset:
    """A client's training data: shuffled batches (the last one may be smaller), repeated for local epochs."""
    # No `.cache()`: the dataset is built anew every round and `take` stops it early, so a cache would be thrown
    # away (with a TF warning per client) and re-parsing a client's snippets per local epoch costs next to nothing.
    ds = to_sequences(snippets, seq_length, table)
    ds = ds.shuffle(shuffle_buffer, seed=seed).batch(batch_size).repeat(local_epochs)
    return ds.take(max_batches) if max_batches else ds


def build_client_dataset_fn(
    client_data: Any,
    seq_length: int,
    batch_size: int,
    shuffle_buffer: int,
    local_epochs: int = 1,
    max_batches: int | None = None,
) -> Callable[[str, int], tf.data.Dataset]:
    """(client id, shuffle seed) -> `client_dataset` of a `tff.simulation.datasets.ClientData` client.

    The batches depend on the client and the seed only (not on TF's global seed).
    The pipeline is traced once into a `tf.function`, not per client and round: building it eagerly traces its
    `map` functions and builds a lookup table every time (~50 ms a client on 2 cores, on the round's critical path).
    """
    table = _lookup_table()

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])
    def make(client_id: tf.Tensor, seed: tf.Tensor) -> tf.data.Dataset:
        tf.random.set_seed(_GRAPH_SEED)  # this function's graph only
        return client_dataset(
            client_data.serializable_dataset_fn(client_id),
            seq_length,
            batch_size,
            shuffle_buffer,
            seed,
            local_epochs,
            max_batches,
            table,
        )

    return lambda client_id, seed: make(tf.constant(client_id), tf.constant(seed, tf.int64))


def clients_eval_dataset(
    client_data: Any, client_ids: list[str], seq_length: int, batch_size: int, with_client_index: bool = False
) -> tf.data.Dataset:
    """These clients' test sequences, client after client (each one's last sequence padded on its own), in
    large batches cached for repeated evaluation. Built as one `flat_map`: the per-client pipeline is traced and
    instantiated once instead of once per client (seconds of startup for 50 clients). `with_client_index`: the
    same sequences as `((ids, client), targets)`, `client` the position of its client in `client_ids`."""
    table = _lookup_table()
    ids = tf.data.Dataset.from_tensor_slices(tf.constant(list(client_ids), tf.string))

    def sequences_of(cid: tf.Tensor) -> tf.data.Dataset:
        return to_sequences(client_data.serializable_dataset_fn(cid), seq_length, table)

    if with_client_index:
        sequences = ids.enumerate().flat_map(
            lambda i, cid: sequences_of(cid).map(lambda x, y: ((x, tf.cast(i, tf.int32)), y))
        )
    else:
        sequences = ids.flat_map(sequences_of)
    return sequences.batch(batch_size).cache()
