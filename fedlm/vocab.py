"""The tutorial's fixed character vocabulary, plus explicit padding and OOV ids."""

from __future__ import annotations

import math

import numpy as np

# Same characters in the same order as the TFF tutorial, so ids 0..85 mean what they mean there.
TUTORIAL_CHARS: list[str] = list(
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
PAD_ID: int = len(TUTORIAL_CHARS)  # 86: padding; never a target for loss or accuracy
OOV_ID: int = PAD_ID + 1  # 87: a character outside the vocabulary; counted, never a target
VOCAB_SIZE: int = OOV_ID + 1
CHAR_TO_ID: dict[str, int] = {c: i for i, c in enumerate(TUTORIAL_CHARS)}

# The tutorial's reference point ("Expected accuracy for random guessing: 0.012"): a uniform guess over its
# characters. Only they are ever targets (padding and OOV are not scored), so the guess is over 86, not 88.
RANDOM_GUESS: dict[str, float] = {
    "random_guess_accuracy": 1.0 / len(TUTORIAL_CHARS),
    "random_guess_perplexity": float(len(TUTORIAL_CHARS)),
    "random_guess_bits_per_char": math.log2(len(TUTORIAL_CHARS)),
}


def encode(text: str) -> np.ndarray:
    """Characters -> ids; unknown characters become OOV_ID (never silently another char)."""
    return np.fromiter((CHAR_TO_ID.get(c, OOV_ID) for c in text), dtype=np.int32, count=len(text))


def decode(ids) -> str:
    """Ids -> text; PAD is dropped, OOV shown as U+FFFD."""
    return "".join(
        TUTORIAL_CHARS[i] if i < PAD_ID else ("\ufffd" if i == OOV_ID else "") for i in np.asarray(ids).ravel()
    )


def unknown_chars(text: str) -> list[str]:
    """The distinct characters of `text` outside the vocabulary, sorted."""
    return sorted(set(text) - CHAR_TO_ID.keys())
