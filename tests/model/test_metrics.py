"""Language-model metrics: per-character cross-entropy, OOV rate, counts; Keras vs federated evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlm import vocab
from fedlm.model import metrics


def _batch():
    """Two sequences: real targets, one OOV target, padding at the tail."""
    y_true = np.array([[5, 6, vocab.OOV_ID, 7], [8, 9, vocab.PAD_ID, vocab.PAD_ID]], np.int32)
    logits = np.random.default_rng(0).normal(size=(2, 4, vocab.VOCAB_SIZE)).astype(np.float32)
    return y_true, logits


def test_char_cross_entropy_is_mean_over_real_characters_only():
    y_true, logits = _batch()
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(b, t) for b in range(2) for t in range(4) if y_true[b, t] < vocab.PAD_ID]
    expected = -np.mean([log_p[b, t, y_true[b, t]] for b, t in real])
    m = metrics.CharCrossEntropy()
    m.update_state(y_true[:1], logits[:1])  # in two batches: a ratio of sums, not a mean of batch means
    m.update_state(y_true[1:], logits[1:])
    np.testing.assert_allclose(float(m.result()), expected, rtol=1e-6)


def test_oov_rate_excludes_padding_and_tokens_exclude_both():
    y_true, logits = _batch()
    oov, tokens = metrics.OOVRate(), metrics.NumTokens()
    oov.update_state(y_true, logits)
    tokens.update_state(y_true, logits)
    np.testing.assert_allclose(float(oov.result()), 1 / 6)  # 8 targets: 2 padding, 1 OOV of the other 6
    assert float(tokens.result()) == 5


def test_derived_metrics_are_defined_for_any_loss_a_diverging_round_produces():
    """optimizer.learning_rate=1e6: round 1's cross-entropy is ~636,198 nats; exp() of it overflowed (OverflowError),
    and the round was neither logged nor checked for divergence."""
    out = metrics.with_derived({"train_cross_entropy": 636198.1, "eval_cross_entropy": float("nan")})
    assert out["train_perplexity"] == math.inf
    assert out["train_bits_per_char"] == pytest.approx(636198.1 / math.log(2))
    assert math.isnan(out["eval_perplexity"]) and math.isnan(out["eval_bits_per_char"])
    assert metrics.with_derived({"x_cross_entropy": metrics.LARGEST_EXP_ARGUMENT})["x_perplexity"] < math.inf


def test_derived_perplexity_and_bits_per_char():
    out = metrics.with_derived({"eval_cross_entropy": math.log(4.0), "eval_loss": 9.0})
    np.testing.assert_allclose(out["eval_perplexity"], 4.0)
    np.testing.assert_allclose(out["eval_bits_per_char"], 2.0)
    assert "eval_loss" in out and not any(k.startswith("eval_loss_") for k in out)


def test_random_guess_baseline_is_the_tutorials():
    guess = vocab.RANDOM_GUESS
    assert f"{guess['random_guess_accuracy']:.3f}" == "0.012"  # as the tutorial prints it (1/86)
    assert guess["random_guess_perplexity"] == pytest.approx(1 / guess["random_guess_accuracy"])
    assert guess["random_guess_bits_per_char"] == pytest.approx(math.log2(guess["random_guess_perplexity"]))
