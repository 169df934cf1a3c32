"""`partition=`: how the federated plays' speeches become clients (conf/partition/). Light: numpy (and SciPy's
Jensen–Shannon distance, which comes with TFF), no TensorFlow, so the population is known before TensorFlow loads.

Each builder takes the option's keys and, at run time, the seed, and returns a `Partition`: the option's name and
keys (part of the data cache's key and of the run's dataset settings) and `deal`, a pure function of the speeches
(and the seed) giving client id -> the indices of its speeches. Every speech with text is dealt to exactly one
client; the train/test split of each client is the data source's (fedlm/data/shakespeare.py), the same for all.

- `role`: one client per (play, speaking role), the natural split (TFF's Shakespeare);
- `play`: one client per play (a cross-silo setting);
- `iid`: the speeches pooled, shuffled and dealt out in the same number of speeches per client as `role`
  (LEAF's IID sampling: only the non-IID-ness changes, not the clients' sizes);
- `dirichlet`: `num_clients` clients of equal size, each drawing its speeches from the plays with proportions
  q ~ Dirichlet(alpha) (Hsu et al. 2019's label skew, with plays as the labels): alpha -> infinity approaches IID,
  a small alpha gives each client one play.

`heterogeneity` is the figure every option logs: the mean Jensen–Shannon divergence of the clients' character
distributions from the pooled one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedlm.errors import ConfigError

Clients = dict[str, list[int]]  # client id -> indices of its speeches, in the order of the speeches

_STREAM = 0x9A27  # the partition's random stream: not the split's (np.random.default_rng(seed)) nor sampling's


class Speech(NamedTuple):
    play: str  # the play's title
    role: str  # the speaker, as the play names it
    text: str  # "" where nothing but stage directions was left


def tff_id(name: str) -> str:
    """A TFF-style id of a name: capitals, digits and underscores (`King Lear Kent` -> `KING_LEAR_KENT`); names that
    differ only in case or punctuation get the same one."""
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")


@dataclasses.dataclass(frozen=True)
class Partition:
    """A `partition=` option, built: `deal(speeches)` -> client id -> indices of its speeches."""

    name: str  # the option's name (conf/partition/<name>.yaml)
    settings: Mapping[str, Any]  # its keys; with `name` and `seed`, what the clients depend on
    seed: int
    deal: Callable[[Sequence[Speech]], Clients]

    def key(self) -> dict[str, Any]:
        """What the partition depends on, JSON-serializable: the data cache's key, the run's dataset settings."""
        return {"partition": self.name, **{f"partition_{k}": v for k, v in self.settings.items()}}


# ---- the options' builders (conf/partition/*.yaml name them) --------------------------------------------------


def role(*, seed: int) -> Partition:
    """One client per (play, speaking role): `KING_LEAR_KENT`."""
    return Partition("role", {}, seed, by_role)


def play(*, seed: int) -> Partition:
    """One client per play: `KING_LEAR`."""
    return Partition("play", {}, seed, by_play)


def iid(*, seed: int) -> Partition:
    """As many clients as `role`, with the same numbers of speeches, of speeches drawn from all plays at random."""
    return Partition("iid", {}, seed, lambda speeches: deal_iid(speeches, seed))


def dirichlet(num_clients: int, alpha: float, *, seed: int) -> Partition:
    """`num_clients` clients of equal size whose speeches come from the plays in proportions ~ Dirichlet(alpha)."""
    settings = {"num_clients": int(num_clients), "alpha": float(alpha)}
    return Partition(
        "dirichlet", settings, seed, lambda speeches: deal_dirichlet(speeches, int(num_clients), float(alpha), seed)
    )


# ---- the partitions, as pure functions -------------------------------------------------------------------------


def by_role(speeches: Sequence[Speech]) -> Clients:
    """Every speech (empty ones too: the split names the roles that have only those) to its (play, role) client."""
    clients: Clients = {}
    for i, s in enumerate(speeches):
        clients.setdefault(tff_id(f"{s.play} {s.role}"), []).append(i)
    return clients


def by_play(speeches: Sequence[Speech]) -> Clients:
    clients: Clients = {}
    for i, s in enumerate(speeches):
        clients.setdefault(tff_id(s.play), []).append(i)
    return clients


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM, seed])


def _ids(prefix: str, n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}_{k:0{width}d}" for k in range(n)]


def deal_iid(speeches: Sequence[Speech], seed: int) -> Clients:
    """The speeches with text, shuffled (seeded) and dealt out in `role`'s sizes: client k gets as many speeches as
    the k-th role (by id) has with text. Clients `IID_000`, …; each one's speeches in the plays' order."""
    roles = by_role(speeches)
    sizes = [n for c in sorted(roles) if (n := sum(1 for i in roles[c] if speeches[i].text))]
    pool = np.array([i for i, s in enumerate(speeches) if s.text], dtype=np.int64)
    order = _rng(seed).permutation(pool)
    bounds = np.cumsum([0, *sizes])
    return {cid: sorted(order[a:b].tolist()) for cid, a, b in zip(_ids("IID", len(sizes)), bounds[:-1], bounds[1:])}


def deal_dirichlet(speeches: Sequence[Speech], num_clients: int, alpha: float, seed: int) -> Clients:
    """`num_clients` clients (`DIRICHLET_000`, …) of the speeches with text, as equal in number as can be (sizes
    differ by at most one), each speech dealt once.

    Client k draws proportions q_k ~ Dirichlet(alpha, …, alpha) over the plays; then, one speech at a time with the
    clients in a seeded random order (so that no client comes first to every play), the client takes its next speech
    from a play chosen with probabilities q_k among the plays that still have speeches (each play's speeches
    shuffled). A client whose plays are used up thus goes on with its next-likeliest ones; one whose remaining
    proportions are all zero (a tiny alpha underflows) takes from the plays in proportion to what they have left.
    """
    by_play_ = by_play(speeches)
    plays = sorted(by_play_)
    rng = _rng(seed)
    pools = [rng.permutation([i for i in by_play_[p] if speeches[i].text]).tolist() for p in plays]
    remaining = np.array([len(p) for p in pools], dtype=np.float64)
    total = int(remaining.sum())
    if num_clients > total:
        raise ConfigError(
            f"partition.num_clients={num_clients}: more clients than the {total} speeches to deal; "
            f"allowed: 1 to {total}"
        )
    q = np.nan_to_num(rng.dirichlet(np.full(len(plays), alpha), size=num_clients))  # NaN: an alpha that underflows
    sizes = np.full(num_clients, total // num_clients) + (np.arange(num_clients) < total % num_clients)
    turns = rng.permutation(np.repeat(np.arange(num_clients), sizes))
    draws = rng.random(total)
    taken = np.zeros(len(plays), dtype=np.int64)
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for k, u in zip(turns.tolist(), draws.tolist()):
        weights = q[k] * (remaining > 0)
        if not weights.sum() > 0:
            weights = remaining
        cumulative = np.cumsum(weights)
        j = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
        if j >= len(plays) or remaining[j] == 0:  # rounding at the top end: the likeliest play with speeches left
            j = int(np.argmax(weights))
        clients[k].append(pools[j][taken[j]])
        taken[j] += 1
        remaining[j] -= 1
    return {cid: sorted(ids) for cid, ids in zip(_ids("DIRICHLET", num_clients), clients)}


# ---- the heterogeneity figure ----------------------------------------------------------------------------------


def heterogeneity(clients: Mapping[str, Sequence[str]]) -> float:
    """The mean, over the clients with any text, of the Jensen–Shannon divergence (in bits: 0 = the same
    distribution, 1 = no character in common) between the client's character distribution and the pooled one (all
    the clients' text together). Every client counts once, as in uniform sampling. Small clients score high by
    sampling noise alone: `iid` at `role`'s sizes measures that floor."""
    texts = ["".join(speeches) for speeches in clients.values()]
    texts = [t for t in texts if t]
    if not texts:
        return 0.0
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    alphabet = np.flatnonzero(np.bincount(codes))  # the characters used (not np.unique: a sort of every character)
    symbols = np.zeros(alphabet[-1] + 1, dtype=np.int64)
    symbols[alphabet] = np.arange(len(alphabet))
    symbols = symbols[codes]
    owner = np.repeat(np.arange(len(texts)), [len(t) for t in texts])
    counts = np.bincount(owner * len(alphabet) + symbols, minlength=len(texts) * len(alphabet))
    counts = counts.reshape(len(texts), len(alphabet)).astype(np.float64)
    pooled = np.broadcast_to(counts.sum(axis=0), counts.shape)
    return float(np.mean(js_divergence(counts, pooled)))


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits of the distributions given as (unnormalized) counts along the last axis:
    SciPy's `jensenshannon` is the distance, the divergence's square root."""
    from scipy.spatial.distance import jensenshannon  # here: ~0.3 s of import, only when the figure is wanted

    return np.asarray(jensenshannon(p, q, base=2, axis=-1)) ** 2
