"""Snippets -> ids -> padded (input, target) sequences -> batches, as in the tutorial but padded, not dropped."""
from __future__ import annotations

import tensorflow as tf

from fedlm.vocab import CHAR_TO_ID, OOV_ID, PAD_ID


def _lookup_table() -> tf.lookup.StaticHashTable:
    chars = list(CHAR_TO_ID)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(chars, [CHAR_TO_ID[c] for c in chars], tf.string, tf.int32),
        default_value=OOV_ID,  # the tutorial's default 0 would silently turn unknown characters into 'd'
    )


def to_sequences(snippets: tf.data.Dataset, seq_length: int) -> tf.data.Dataset:
    """OrderedDict(snippets=str) -> (input, target) int32 pairs of length seq_length; the last one tail-padded."""
    table = _lookup_table()

    def pad_split(chunk: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        chunk = tf.pad(chunk, [[0, seq_length + 1 - tf.shape(chunk)[0]]], constant_values=PAD_ID)
        chunk = tf.ensure_shape(chunk, [seq_length + 1])
        return chunk[:-1], chunk[1:]

    return (
        snippets.map(lambda x: table.lookup(tf.strings.unicode_split(x["snippets"], "UTF-8")))
        .unbatch()
        .batch(seq_length + 1)
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
) -> tf.data.Dataset:
    """A client's training data: shuffled batches (the last one may be smaller), repeated for local epochs."""
    ds = to_sequences(snippets, seq_length).cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed).batch(batch_size).repeat(local_epochs)
    return ds.take(max_batches) if max_batches else ds


def eval_dataset(snippet_datasets: list[tf.data.Dataset], seq_length: int, batch_size: int) -> tf.data.Dataset:
    """Many clients' test sequences in one large-batch dataset, cached for repeated evaluation."""
    seqs = [to_sequences(ds, seq_length) for ds in snippet_datasets]
    ds = seqs[0]
    for more in seqs[1:]:
        ds = ds.concatenate(more)
    return ds.batch(batch_size).cache()
