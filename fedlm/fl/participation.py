"""`participation=`: which of a round's sampled clients report, and with how much of their work (conf/participation/).

Unreliable clients as FLSim and FedScale simulate them: a sampled client fails to report with probability
`dropout`; `over_select` extra clients are sampled so that `clients_per_round` still report; a fraction
`straggler_fraction` of the reporting clients completes only a share `straggler_work` of its local batches (the work
a deadline allows). Like the samplers (fedlm/fl/sampling.py), a pure function of (seed, round): a rerun or a resumed
run sees the same clients drop and straggle, and there is no state to save. A client's failure is drawn from
(seed, round, client id): it does not depend on which other clients were sampled with it.

Light: numpy only (the run truncates the stragglers' datasets, fedlm/fl/loop.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np

_DROPOUT, _STRAGGLERS = 0, 1  # the streams drawn from (seed, round, ...)


@dataclasses.dataclass(frozen=True)
class RoundParticipation:
    """One round's clients: those sampled (in the sampler's order), those that failed to report, the reporting ones
    that train (the first `clients_per_round` of the others, in sampled order), and the stragglers among these, which
    train on a share `work` of their batches."""

    sampled: list[str]
    dropped: list[str]
    reporting: list[str]
    stragglers: frozenset[str]
    work: float

    def batches(self, client: str, available: int) -> int:
        """How many of its `available` batches the client trains: all, or a straggler's share, rounded up (at least
        one batch: a client that does nothing has dropped out)."""
        if client not in self.stragglers:
            return available
        return min(available, max(1, math.ceil(self.work * available - 1e-9)))

    def metrics(self) -> dict[str, int]:
        """TFF-style round metrics (fedlm/fl/loop.py names them): counts of clients."""
        return {
            "sampled": len(self.sampled),
            "dropped": len(self.dropped),
            "reporting": len(self.reporting),
            "stragglers": len(self.stragglers),
        }


Participation = Callable[[int], RoundParticipation]  # round number -> its participation


def _client_key(client: str) -> int:
    """A stable 64-bit number of a client id (Python's `hash` of a str changes between processes)."""
    return int.from_bytes(hashlib.sha256(client.encode()).digest()[:8], "little")


def fails(seed: int, round_num: int, client: str, dropout: float) -> bool:
    """Whether `client` fails to report in `round_num`: probability `dropout`, drawn from (seed, round, client)."""
    return dropout > 0 and np.random.default_rng([seed, round_num, _DROPOUT, _client_key(client)]).random() < dropout


def reliable(
    dropout: float,
    over_select: int,
    straggler_fraction: float,
    straggler_work: float,
    *,
    sampler: Callable[[int], list[str]],
    clients_per_round: int,
    seed: int,
) -> Participation:
    """Every key at its default (dropout 0, over_select 0, straggler_fraction 0): every sampled client reports with
    all its batches, as before this option existed. `sampler` draws `clients_per_round + over_select` clients."""

    def participate(round_num: int) -> RoundParticipation:
        sampled = list(sampler(round_num))
        dropped = [c for c in sampled if fails(seed, round_num, c, dropout)]
        failed = set(dropped)
        reporting = [c for c in sampled if c not in failed][:clients_per_round]
        count = math.floor(straggler_fraction * len(reporting) + 0.5)  # "that fraction", to the nearest client
        rng = np.random.default_rng([seed, round_num, _STRAGGLERS])
        slow = rng.choice(len(reporting), size=count, replace=False) if count else []
        return RoundParticipation(sampled, dropped, reporting, frozenset(reporting[i] for i in slow), straggler_work)

    return participate


def is_reliable(dropout: float, over_select: int, straggler_fraction: float, straggler_work: float) -> bool:
    """The keys change nothing: today's behaviour (no participation metrics are logged)."""
    return dropout == 0 and over_select == 0 and (straggler_fraction == 0 or straggler_work == 1)
