"""Text generation: the tutorial's `generate_text` on a batch-1 stateful copy of a trained char-RNN.
Temperature 0 is greedy decoding; padding and OOV are never generated."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from fedlm import vocab
from fedlm.conf.checks import check_prompt
from fedlm.model import char_rnn

TUTORIAL_PROMPT = "What of TensorFlow Federated, you ask? "


class Generator:
    """A batch-1 stateful copy of a char-RNN that continues prompts one character at a time."""

    def __init__(self, weights: Any):
        """weights: a list of arrays in Keras order, or TFF `ModelWeights` (sizes, cell and depth read from their
        shapes)."""
        self.model = char_rnn.sizes_from_weights(weights).build(batch_size=1, stateful=True)
        self.set_weights(weights)

        @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32)])
        def next_logits(ids):  # logits of the next character, over the real characters only (no PAD, OOV)
            return self.model(ids)[0, -1, : vocab.PAD_ID]

        self._next_logits = next_logits

    def set_weights(self, weights: Any) -> None:
        """A list of arrays (Keras order) or TFF `ModelWeights`."""
        if hasattr(weights, "assign_weights_to"):
            weights.assign_weights_to(self.model)
        else:
            self.model.set_weights(weights)

    def sample(self, prompt: str, length: int, temperature: float, rng) -> str:
        """The `length` characters after `prompt` (not including it); rng: a `numpy.random.Generator`."""
        check_prompt(prompt)
        self.model.reset_states()
        ids = np.asarray([vocab.encode(prompt)], np.int32)
        out = []
        for _ in range(length):
            logits = self._next_logits(ids).numpy().astype(np.float64)
            if temperature == 0:
                nxt = int(np.argmax(logits))
            else:  # Gumbel-max: an exact draw from softmax(logits / temperature)
                nxt = int(np.argmax(logits / temperature + rng.gumbel(size=logits.shape)))
            out.append(nxt)
            ids = np.asarray([[nxt]], np.int32)
        return vocab.decode(out)


def generate_text(
    trained, prompt: str = TUTORIAL_PROMPT, length: int = 200, temperature: float = 1.0, seed: int = 0
) -> str:
    """The tutorial's `generate_text(model, start_string)`: prompt + `length` sampled characters."""
    check_prompt(prompt)
    return prompt + Generator(trained.get_weights()).sample(prompt, length, temperature, np.random.default_rng(seed))
