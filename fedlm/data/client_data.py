"""Federated text as TFF `ClientData`: fedlm's parsed plays, or TFF's own download."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.errors import ConfigError


def to_client_data(speeches_by_client: dict[str, list[str]]):
    """A `tff.simulation.datasets.ClientData` whose examples are OrderedDict(snippets=<string>), as TFF's loader."""
    ids = list(speeches_by_client)
    flat = tf.constant([s.encode("utf-8") for c in ids for s in speeches_by_client[c]] or [b""], tf.string)
    bounds = np.cumsum([0] + [len(speeches_by_client[c]) for c in ids]).astype(np.int64)
    starts = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, bounds[:-1]), -1)
    ends = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, bounds[1:]), -1)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def dataset_fn(cid: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            collections.OrderedDict(snippets=flat[starts.lookup(cid) : ends.lookup(cid)])
        )

    return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(ids, dataset_fn)


def client_sizes(client_data) -> dict[str, int]:
    """Characters per client of any ClientData of snippets (reads every client once)."""
    return {
        cid: sum(len(x["snippets"].numpy().decode("utf-8")) for x in client_data.create_tf_dataset_for_client(cid))
        for cid in client_data.client_ids
    }


def load_tff_shakespeare(cache_dir: str | None):
    """TFF's own loader (downloads unless cached); fails at once with a useful message when offline."""
    try:
        return tff.simulation.datasets.shakespeare.load_data(cache_dir=cache_dir)
    except Exception as e:  # download errors come as several types
        raise ConfigError(
            f"data=tff_shakespeare: could not load TFF's Shakespeare (cache_dir={cache_dir!r}): {e}. "
            "It needs network access or a cached shakespeare.sqlite; use data=shakespeare for the offline dataset."
        ) from e
