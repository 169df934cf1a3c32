"""Fairness figures of an evaluation: how the eval clients' own accuracy and loss spread (quantiles, the worst 10%),
and the eval clients that trained so far against those that never did (Yuan et al. 2022's participation gap).

Light (NumPy only): plain numbers in, metrics out. An eval client is matched to a training client by its id: every
`partition=` splits each client's speeches into its train and test split under one id, and `data=tff_shakespeare`'s
train and test ClientData share TFF's ids, so eval client X trained in a round that sampled X.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np

QUANTILES = (10, 50, 90)
WORST_FRACTION = 0.1


def summarize(
    client_ids: Sequence[str],
    accuracy: Sequence[float],
    loss: Sequence[float],
    tokens: Sequence[float],
    sampled: Collection[str] | None,
) -> dict[str, float]:
    """fedlm's metric names -> values, over the eval clients with at least one real target character:
    eval_client_accuracy_p10/p50/p90 and eval_client_loss_p10/p50/p90 (NumPy's linear quantiles over clients),
    eval_worst10_accuracy and eval_worst10_loss (the mean over the ceil(10%) clients of lowest accuracy), and, with
    `sampled` (the ids trained so far; None at round 0), eval_seen_clients, and eval_seen_accuracy/_loss and
    eval_unseen_accuracy/_loss: the mean over the clients of each side (left out when a side has none)."""
    ids = [c for c, t in zip(client_ids, tokens) if t > 0]
    acc = np.asarray([a for a, t in zip(accuracy, tokens) if t > 0], dtype=np.float64)
    nats = np.asarray([x for x, t in zip(loss, tokens) if t > 0], dtype=np.float64)
    if not ids:
        return {}
    metrics: dict[str, float] = {}
    for q in QUANTILES:
        metrics[f"eval_client_accuracy_p{q}"] = float(np.percentile(acc, q))
    for q in QUANTILES:
        metrics[f"eval_client_loss_p{q}"] = float(np.percentile(nats, q))
    worst = np.argsort(acc, kind="stable")[: math.ceil(WORST_FRACTION * len(ids))]
    metrics["eval_worst10_accuracy"] = float(acc[worst].mean())
    metrics["eval_worst10_loss"] = float(nats[worst].mean())
    if sampled is not None:
        seen = np.array([c in sampled for c in ids])
        metrics["eval_seen_clients"] = float(seen.sum())
        for side, mask in (("seen", seen), ("unseen", ~seen)):
            if mask.any():
                metrics[f"eval_{side}_accuracy"] = float(acc[mask].mean())
                metrics[f"eval_{side}_loss"] = float(nats[mask].mean())
    return metrics


class SampledSoFar:
    """The clients a run's sampler drew in rounds 1 … r, for any r: recomputed from the sampler (a pure function of
    the round), so a resumed run knows its earlier rounds' clients without saving them."""

    def __init__(self, sampler: Callable[[int], Sequence[str]]):
        self._sampler = sampler
        self._rounds = 0
        self._ids: set[str] = set()

    def __call__(self, round_num: int) -> frozenset[str]:
        if round_num < self._rounds:  # never happens in a run (rounds only grow); recount from the start
            self._rounds, self._ids = 0, set()
        for r in range(self._rounds + 1, round_num + 1):
            self._ids.update(self._sampler(r))
        self._rounds = max(self._rounds, round_num)
        return frozenset(self._ids)
