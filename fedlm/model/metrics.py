"""How predictions are scored: the masked loss and accuracy (padding and OOV are never targets), and language-model
metrics beyond them: per-character cross-entropy (-> perplexity, bits per character), OOV rate, real target
characters, the number of clients behind a round.

They are Keras metrics so that the same objects serve `keras_model.evaluate` and TFF: TFF sums each metric's
variables over the clients of a round before `result()`, so a ratio of sums (cross-entropy, OOV rate) is exact
over all clients' characters, and a count (clients, characters) is the round's total.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import tensorflow as tf

from fedlm.vocab import OOV_ID, PAD_ID, VOCAB_SIZE


def _target_mask(y_true: tf.Tensor) -> tf.Tensor:
    """1 for real vocabulary targets; 0 for padding and OOV (ids >= PAD_ID)."""
    return tf.cast(tf.less(tf.cast(y_true, tf.int32), PAD_ID), tf.float32)


def real_target_count(y_true: tf.Tensor) -> tf.Tensor:
    """The number of targets that count for loss and accuracy (not padding, not OOV), as int64."""
    return tf.math.count_nonzero(tf.less(tf.cast(y_true, tf.int32), PAD_ID), dtype=tf.int64)


@tf.keras.utils.register_keras_serializable(package="fedlm")
class NumTokens(tf.keras.metrics.Sum):
    """The number of real target characters seen (padding and OOV excluded)."""

    def __init__(self, name: str = "num_tokens", dtype=tf.float32):
        super().__init__(name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(tf.reduce_sum(_target_mask(y_true)))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class MaskedCrossEntropy(tf.keras.losses.Loss):
    """Mean cross-entropy over real target characters of a batch (padding and OOV excluded)."""

    def __init__(self, name: str = "masked_cross_entropy", **kwargs):
        super().__init__(name=name, reduction=tf.keras.losses.Reduction.NONE, **kwargs)

    def call(self, y_true, y_pred):
        mask = _target_mask(y_true)
        labels = tf.minimum(tf.cast(y_true, tf.int32), VOCAB_SIZE - 1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y_pred)
        return tf.math.divide_no_nan(tf.reduce_sum(ce * mask), tf.reduce_sum(mask))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class MaskedAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
    """Next-character accuracy over real targets (padding and OOV excluded)."""

    def __init__(self, name: str = "accuracy", dtype=tf.float32):
        super().__init__(name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(
            tf.reshape(y_true, [-1, 1]), tf.reshape(y_pred, [-1, VOCAB_SIZE]), tf.reshape(_target_mask(y_true), [-1])
        )


def compile_for_eval(model: tf.keras.Model) -> tf.keras.Model:
    model.compile(loss=MaskedCrossEntropy(), metrics=[MaskedAccuracy(), NumTokens(), *text_metrics()])
    return model


class _RatioMetric(tf.keras.metrics.Metric):
    """sum(numerator) / sum(denominator) over everything seen (exact across batches and, in TFF, clients).

    Comparisons use tf.equal, not `==`: in TFF's graph mode `tensor == x` can be a Python identity test.
    """

    def __init__(self, name: str, dtype=tf.float32, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.numerator = self.add_weight(name="numerator", initializer="zeros")
        self.denominator = self.add_weight(name="denominator", initializer="zeros")

    def result(self):
        return tf.math.divide_no_nan(self.numerator, self.denominator)


@tf.keras.utils.register_keras_serializable(package="fedlm")
class CharCrossEntropy(_RatioMetric):
    """Cross-entropy in nats per real target character (padding and OOV excluded), summed over all characters.

    Unlike the loss (TFF's and Keras's mean of the per-batch means, weighted by each batch's sequences), this does not
    depend on how characters fall into batches, so exp() of it is the perplexity and it / ln 2 the bits per character.
    """

    def __init__(self, name: str = "cross_entropy", dtype=tf.float32, **kwargs):
        super().__init__(name, dtype, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        mask = tf.cast(y_true < PAD_ID, self.dtype)
        labels = tf.minimum(y_true, VOCAB_SIZE - 1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.cast(y_pred, self.dtype))
        self.numerator.assign_add(tf.reduce_sum(ce * mask))
        self.denominator.assign_add(tf.reduce_sum(mask))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class OOVRate(_RatioMetric):
    """Fraction of the text's target characters (padding excluded) that are outside the vocabulary."""

    def __init__(self, name: str = "oov_rate", dtype=tf.float32, **kwargs):
        super().__init__(name, dtype, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        self.numerator.assign_add(tf.reduce_sum(tf.cast(tf.equal(y_true, OOV_ID), self.dtype)))
        self.denominator.assign_add(tf.reduce_sum(tf.cast(tf.not_equal(y_true, PAD_ID), self.dtype)))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class NumClients(tf.keras.metrics.Metric):
    """1 once a client has seen a batch; TFF sums it over the round's clients = clients that contributed.

    Only meaningful inside TFF (a Keras evaluation is one "client").
    """

    def __init__(self, name: str = "num_clients", dtype=tf.float32, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.seen = self.add_weight(name="seen", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.seen.assign(1.0)

    def result(self):
        return self.seen


def text_metrics() -> list[tf.keras.metrics.Metric]:
    """Fresh metric objects for Keras evaluation and TFF (which adds NumClients); with MaskedAccuracy and
    NumTokens they are what a run reports."""
    return [CharCrossEntropy(), OOVRate()]


# exp() of more than this overflows a float: the perplexity of such a cross-entropy is inf.
LARGEST_EXP_ARGUMENT = math.log(sys.float_info.max)  # 709.78


def perplexity(nats: float) -> float:
    """exp(cross-entropy), for any value a diverging round can produce: inf above ~709.78 nats, NaN for NaN."""
    return math.inf if nats > LARGEST_EXP_ARGUMENT else math.exp(nats)


def with_derived(metrics: Mapping[str, float]) -> dict[str, float]:
    """Add `<prefix>_perplexity` and `<prefix>_bits_per_char` for every `<prefix>_cross_entropy` (nats/char)."""
    out = dict(metrics)
    for key, nats in metrics.items():
        if key.endswith("_cross_entropy"):
            prefix = key[: -len("_cross_entropy")]
            out[f"{prefix}_perplexity"] = perplexity(nats)
            out[f"{prefix}_bits_per_char"] = nats / math.log(2)
    return out
