import collections

import numpy as np
import pytest
import tensorflow as tf

from fedlm import vocab
from fedlm.data import preprocessing
from fedlm.model import char_rnn, metrics


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


def _pairs(ds):
    return [(x.tolist(), y.tolist()) for x, y in ds.as_numpy_iterator()]


@pytest.mark.parametrize("k", [0, 1, 3])
def test_a_single_character_tail_is_no_sequence(k):
    """A client of k·(seq_length + 1) + 1 characters: the lone last character would be an input without a target."""
    seq_length = 4
    text = "".join(np.random.default_rng(k).choice(list("abcdefgh \n"), k * (seq_length + 1) + 1))
    got = _pairs(preprocessing.to_sequences(_snippets(text[:3], text[3:]), seq_length))  # chunks cross speeches
    assert len(got) == k and all(vocab.PAD_ID not in y for _, y in got)  # k full sequences, each with its targets
    assert got == _pairs(preprocessing.to_sequences(_snippets(text[:-1]), seq_length))  # the rest unchanged


def test_tails_of_two_or_more_characters_are_kept():
    seq_length = 4
    for n in range(2, 3 * (seq_length + 1) + 1):
        if n % (seq_length + 1) == 1:
            continue
        got = _pairs(preprocessing.to_sequences(_snippets("x" * n), seq_length))
        assert len(got) == -(-n // (seq_length + 1)), n  # every chunk, the last one padded
        # every character is a target but each chunk's first
        assert sum(t != vocab.PAD_ID for _, y in got for t in y) == n - len(got), n


def test_eval_sequences_drop_single_character_tails_too():
    from fedlm.data import client_data as client_data_lib

    client_data = client_data_lib.to_client_data({"A": ["abcdefghijk"], "B": ["lmnopqr"]})  # 2·5 + 1 and 5 + 2 chars
    got = [
        (x, y)
        for bx, by in preprocessing.clients_eval_dataset(client_data, ["A", "B"], 4, 8).as_numpy_iterator()
        for x, y in zip(bx, by)
    ]
    assert len(got) == 2 + 2 and all((y != vocab.PAD_ID).any() for _, y in got)


def test_short_client_yields_one_padded_batch():
    ds = preprocessing.client_dataset(_snippets("hi"), seq_length=10, batch_size=8, shuffle_buffer=10, seed=0)
    batches = list(ds)
    assert len(batches) == 1 and batches[0][0].shape == (1, 10)


def test_loss_and_accuracy_ignore_padding_and_oov():
    y = tf.constant([[1, 2, vocab.PAD_ID, vocab.OOV_ID]])
    right = tf.one_hot([[1, 2, 5, 5]], vocab.VOCAB_SIZE) * 10.0
    acc = metrics.MaskedAccuracy()
    acc.update_state(y, right)
    assert acc.result().numpy() == 1.0  # the wrong predictions at PAD/OOV positions do not count
    loss_full = metrics.MaskedCrossEntropy()(y, right).numpy()
    loss_real = metrics.MaskedCrossEntropy()(y[:, :2], right[:, :2]).numpy()
    np.testing.assert_allclose(loss_full, loss_real, rtol=1e-6)


def test_local_epochs_and_max_batches():
    text = "x" * 200
    one = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0)))
    two = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0, local_epochs=2)))
    capped = len(list(preprocessing.client_dataset(_snippets(text), 10, 4, 10, 0, local_epochs=2, max_batches=3)))
    assert (one, two, capped) == (5, 10, 3)


def test_generate_text_from_weights_and_rejects_unknown_prompt_chars():
    import pytest

    from fedlm.model import generator

    m = char_rnn.build_model(4, 8)
    text = generator.generate_text(m, prompt="Hi ", length=30, seed=1)
    assert text.startswith("Hi ") and len(text) == 33 and all(c in vocab.CHAR_TO_ID for c in text)
    assert generator.generate_text(m, prompt="Hi ", length=30, seed=1) == text  # seeded
    with pytest.raises(ValueError, match="é"):
        generator.generate_text(m, prompt="café")


def test_traced_client_datasets_equal_eager_ones():
    """The once-traced builder gives each client the same batches, in the same order, as the eager pipeline."""
    from fedlm.data import client_data as client_data_lib

    rng = np.random.default_rng(0)
    chars = list("abcdefgh \n")
    speeches = {
        cid: ["".join(rng.choice(chars, rng.integers(1, 60))) for _ in range(n)]
        for cid, n in (("A", 9), ("B", 3), ("C", 1))
    }
    client_data = client_data_lib.to_client_data(speeches)
    make = preprocessing.build_client_dataset_fn(client_data, 10, 3, 5, local_epochs=2, max_batches=7)
    tf.random.set_seed(None)  # the eager pipeline's order depends on TF's global seed; the traced one does not
    for cid in speeches:
        for seed in (0, 12345):
            eager = preprocessing.client_dataset(
                client_data.create_tf_dataset_for_client(cid), 10, 3, 5, seed=seed, local_epochs=2, max_batches=7
            )
            got, want = list(make(cid, seed).as_numpy_iterator()), list(eager.as_numpy_iterator())
            assert len(got) == len(want) > 0
            for (gx, gy), (wx, wy) in zip(got, want):
                np.testing.assert_array_equal(gx, wx)
                np.testing.assert_array_equal(gy, wy)


def test_traced_client_datasets_ignore_the_global_seed():
    from fedlm.data import client_data as client_data_lib

    client_data = client_data_lib.to_client_data({"A": [f"speech {i} " * 3 for i in range(30)]})
    tf.random.set_seed(None)
    make = preprocessing.build_client_dataset_fn(client_data, 10, 4, 50)
    unseeded = [x for x, _ in make("A", 0).as_numpy_iterator()]
    tf.random.set_seed(0)
    try:
        make = preprocessing.build_client_dataset_fn(client_data, 10, 4, 50)  # traced under a global seed
        seeded = [x for x, _ in make("A", 0).as_numpy_iterator()]
        other = [x for x, _ in make("A", 1).as_numpy_iterator()]
    finally:
        tf.random.set_seed(None)
    np.testing.assert_array_equal(np.concatenate(seeded), np.concatenate(unseeded))
    assert not np.array_equal(np.concatenate(other), np.concatenate(unseeded))  # the seed given does matter


def test_clients_eval_dataset_is_the_clients_sequences_one_after_the_other():
    from fedlm.data import client_data as client_data_lib

    speeches = {"A": ["abcdefghijkl", "mn"], "B": ["opq"], "C": ["rstuvwxyz"]}
    client_data = client_data_lib.to_client_data(speeches)
    got = list(preprocessing.clients_eval_dataset(client_data, ["C", "A"], 4, 3).as_numpy_iterator())
    c, a = (preprocessing.to_sequences(client_data.create_tf_dataset_for_client(cid), 4) for cid in ("C", "A"))
    want = list(c.concatenate(a).batch(3).as_numpy_iterator())  # the clients' sequences one after the other
    assert len(got) == len(want) == 2 and sum(len(x) for x, _ in got) == 2 + 3  # each client's tail padded alone
    for (gx, gy), (wx, wy) in zip(got, want):
        np.testing.assert_array_equal(gx, wx)
        np.testing.assert_array_equal(gy, wy)
