"""Text generation from a trained model: the tutorial's `generate_text` on a batch-1 stateful copy."""
from __future__ import annotations

import tensorflow as tf

from fedlm import model as model_lib, vocab

TUTORIAL_PROMPT = "What of TensorFlow Federated, you ask? "


def generate_text(trained: tf.keras.Model, prompt: str = TUTORIAL_PROMPT, length: int = 200, seed: int = 0) -> str:
    """Sample `length` characters after `prompt` (temperature 1), never emitting padding or OOV."""
    if unknown := vocab.unknown_chars(prompt):
        raise ValueError(f"prompt={prompt!r}: characters outside the vocabulary: {unknown}")
    embedding, gru = trained.layers[0], trained.layers[1]
    gen = model_lib.build_model(embedding.output_dim, gru.units, batch_size=1, stateful=True)
    gen.set_weights(trained.get_weights())
    tf.random.set_seed(seed)
    x = tf.constant([vocab.encode(prompt)], tf.int32)
    out = []
    for _ in range(length):
        logits = gen(x)[:, -1, : vocab.PAD_ID]
        nxt = int(tf.random.categorical(logits, 1)[0, 0])
        out.append(nxt)
        x = tf.constant([[nxt]], tf.int32)
    return prompt + vocab.decode(out)
