import collections

import numpy as np
import tensorflow as tf

from fedlm import model, preprocessing, vocab


def _snippets(*texts):
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(snippets=list(texts)))


def test_vocabulary_keeps_tutorial_order_and_adds_pad_oov():
    assert len(vocab.TUTORIAL_CHARS) == 86 and vocab.TUTORIAL_CHARS[:3] == ["d", "h", "l"]
    assert (vocab.PAD_ID, vocab.OOV_ID, vocab.VOCAB_SIZE) == (86, 87, 88)
    assert vocab.encode("d—").tolist() == [0, vocab.OOV_ID]  # the tutorial would have mapped '—' to 'd'
    assert vocab.unknown_chars("ab—é") == ["é", "—"]


def test_sequences_pad_the_tail_instead_of_dropping():
    seqs = list(preprocessing.to_sequences(_snippets("abcdefg"), seq_length=4))
    x, y = (np.stack(t) for t in zip(*[(a.numpy(), b.numpy()) for a, b in seqs]))
    assert x.shape == (2, 4)
    assert vocab.decode(x[0]) == "abcd" and vocab.decode(y[0]) == "bcde"
    # chunks of seq_length + 1 do not overlap, as in the tutorial: "abcde" then "fg" + padding
    assert vocab.decode(x[1]) == "fg" and vocab.decode(y[1]) == "g"
    assert y[1].tolist() == [vocab.CHAR_TO_ID["g"]] + [vocab.PAD_ID] * 3


def test_short_client_yields_one_padded_batch():
    ds = preprocessing.client_dataset(_snippets("hi"), seq_length=10, batch_size=8, shuffle_buffer=10, seed=0)
    batches = list(ds)
    assert len(batches) == 1 and batches[0][0].shape == (1, 10)


def test_loss_and_accuracy_ignore_padding_and_oov():
    y = tf.constant([[1, 2, vocab.PAD_ID, vocab.OOV_ID]])
    right = tf.one_hot([[1, 2, 5, 5]], vocab.VOCAB_SIZE) * 10.0
    acc = model.MaskedAccuracy()
    acc.update_state(y, right)
    assert acc.result().numpy() == 1.0  # the wrong predictions at PAD/OOV positions do not count
    loss_full = model.MaskedCrossEntropy()(y, right).numpy()
    loss_real = model.MaskedCrossEntropy()(y[:, :2], right[:, :2]).numpy()
    np.testing.assert_allclose(loss_full, loss_real, rtol=1e-6)


def test_local_epochs_and_max_batches():
    text = "x" * 200
    one = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0)))
    two = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0, local_epochs=2)))
    capped = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0, local_epochs=2, max_batches=3)))
    assert (one, two, capped) == (5, 10, 3)


def test_generate_text_from_weights_and_rejects_unknown_prompt_chars():
    import pytest

    from fedlm import generate

    m = model.build_model(4, 8)
    text = generate.generate_text(m, prompt="Hi ", length=30, seed=1)
    assert text.startswith("Hi ") and len(text) == 33 and all(c in vocab.CHAR_TO_ID for c in text)
    assert generate.generate_text(m, prompt="Hi ", length=30, seed=1) == text  # seeded
    with pytest.raises(ValueError, match="é"):
        generate.generate_text(m, prompt="café")
