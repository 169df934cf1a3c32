"""`partition=`: how the federated plays' speeches become clients (fedlm/data/partitions.py), and the split on top."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from fedlm.data import partitions, shakespeare
from fedlm.errors import ConfigError

PARTITIONS = {
    "role": lambda seed: partitions.role(seed=seed),
    "play": lambda seed: partitions.play(seed=seed),
    "iid": lambda seed: partitions.iid(seed=seed),
    "dirichlet": lambda seed: partitions.dirichlet(40, 0.5, seed=seed),
}


@pytest.fixture(scope="module")
def plays():
    return shakespeare.load_plays()


@pytest.fixture(scope="module")
def federated(plays):
    """The speeches the partitions deal: those of the plays outside the default proxy genre."""
    return [partitions.Speech(p.title, r, t) for p in plays if p.genre != "histories" for r, t in p.speeches]


def _numbered_plays(n_plays: int = 6, roles: int = 5, speeches: int = 12) -> list[shakespeare.Play]:
    """Plays whose speeches are all different (numbered), some roles with one speech, one role with only an empty
    one: each speech of the split can be traced back. Play k speaks mostly letter k, so plays differ in characters."""
    out = []
    for k in range(n_plays):
        letter = "abcdefghij"[k]
        lines = [(f"R{r}", f"{letter * 20} {k}.{r}.{i}") for r in range(roles) for i in range(speeches if r else 1)]
        out.append(shakespeare.Play(f"Play {k}", "comedies", [*lines, ("MUTE", "")]))
    return out


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_every_speech_is_dealt_once_and_lands_on_one_side_only(name):
    plays = _numbered_plays()
    text = shakespeare.build_federated_text(plays, [], 0.25, seed=3, partition=PARTITIONS[name](3))
    spoken = collections.Counter(t for p in plays for _, t in p.speeches if t)
    assert set(spoken.values()) == {1}  # numbered: every speech is its own text
    landed = [s for split in (text.train, text.test) for speeches in split.values() for s in speeches]
    assert collections.Counter(landed) == spoken  # each in exactly one client and one side
    for cid, test in text.test.items():
        assert text.train[cid] and not set(test) & set(text.train[cid])
    # tiny clients stay, training only: a role of one speech (role), or a client dealt too few to lend one
    assert all(text.train[c] and c not in text.test for c in text.train_only_clients)
    if name == "role":
        assert len(text.train_only_clients) == 6 and len(text.empty_clients) == 6  # R0 and MUTE of each play


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_on_the_plays_every_speech_is_dealt_once(name, federated):
    dealt = PARTITIONS[name](0).deal(federated)
    counts = collections.Counter(i for ids in dealt.values() for i in ids)
    with_text = {i for i, s in enumerate(federated) if s.text}
    assert set(counts.values()) == {1} and with_text <= set(counts) <= set(range(len(federated)))


def test_role_is_todays_split(plays):
    """The default partition keeps the clients and the split the data had before partitions (no seed use of its own)."""
    default = shakespeare.build_federated_text(plays, ["histories"], 0.2, seed=0)
    role = shakespeare.build_federated_text(plays, ["histories"], 0.2, 0, partitions.role(seed=7))
    assert default == role and "KING_LEAR_KENT" in role.train and len(role.train) > 800
    by_role = collections.defaultdict(list)
    for p in plays:
        if p.genre != "histories":
            for r, t in p.speeches:
                if t:
                    by_role[shakespeare.client_id(p.title, r)].append(t)
    kent = collections.Counter(role.train["KING_LEAR_KENT"] + role.test.get("KING_LEAR_KENT", []))
    assert kent == collections.Counter(by_role["KING_LEAR_KENT"])


def test_play_gives_one_client_per_federated_play(plays):
    text = shakespeare.build_federated_text(plays, ["histories"], 0.2, 0, partitions.play(seed=0))
    federated_titles = {p.title for p in plays if p.genre != "histories"}
    assert set(text.train) == {partitions.tff_id(t) for t in federated_titles} and "KING_LEAR" in text.train


def test_iid_keeps_roles_sizes_and_mixes_the_plays(federated):
    roles, iid = partitions.by_role(federated), partitions.deal_iid(federated, seed=0)
    role_sizes = sorted(n for ids in roles.values() if (n := sum(1 for i in ids if federated[i].text)))
    assert sorted(map(len, iid.values())) == role_sizes and len(iid) == len(role_sizes)
    plays_per_client = [len({federated[i].play for i in ids}) for ids in iid.values() if len(ids) >= 20]
    assert np.median(plays_per_client) >= 10  # a role speaks in one play; an IID client of 20+ speeches, in many


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_the_same_seed_deals_the_same_clients_another_seed_others(name, federated, plays):
    deal = PARTITIONS[name]
    assert deal(0).deal(federated) == deal(0).deal(federated)
    assert deal(0).deal(federated) != deal(1).deal(federated)
    small = _numbered_plays()
    assert shakespeare.build_federated_text(small, [], 0.2, 1, deal(1)) == shakespeare.build_federated_text(
        small, [], 0.2, 1, deal(1)
    )


def test_dirichlet_deals_equal_clients_and_refuses_more_clients_than_speeches(federated):
    dealt = partitions.deal_dirichlet(federated, 97, 1.0, seed=0)
    sizes = [len(ids) for ids in dealt.values()]
    assert len(dealt) == 97 and max(sizes) - min(sizes) <= 1
    assert sum(sizes) == sum(1 for s in federated if s.text)
    speeches = [partitions.Speech("P", "R", f"{i}") for i in range(5)]
    with pytest.raises(ConfigError, match=r"^partition.num_clients=6: more clients than the 5 speeches"):
        partitions.deal_dirichlet(speeches, 6, 1.0, seed=0)
    assert len(partitions.deal_dirichlet(speeches, 5, 1.0, seed=0)) == 5  # one speech each: train-only clients


def test_a_smaller_alpha_gives_clients_fewer_plays_and_a_higher_heterogeneity(federated):
    """alpha -> infinity approaches IID, alpha -> 0 one play per client, on plays that differ in characters (the
    numbered plays) and on Shakespeare's, whose character distributions differ far less."""
    small = [
        partitions.Speech(p.title, r, t) for p in _numbered_plays(n_plays=8, speeches=40) for r, t in p.speeches if t
    ]

    def figures(speeches, alphas, num_clients):
        out = []
        for alpha in alphas:
            dealt = partitions.deal_dirichlet(speeches, num_clients, alpha, seed=0)
            top_share = np.mean(
                [max(collections.Counter(speeches[i].play for i in ids).values()) / len(ids) for ids in dealt.values()]
            )
            texts = {c: [speeches[i].text for i in ids] for c, ids in dealt.items()}
            out.append((top_share, partitions.heterogeneity(texts)))
        return out

    (share_low, jsd_low), (share_mid, jsd_mid), (share_high, jsd_high) = figures(small, [0.01, 1.0, 1000.0], 20)
    assert share_low > share_mid > share_high and jsd_low > jsd_mid > jsd_high
    (share_low, jsd_low), (share_high, jsd_high) = figures(federated, [0.01, 1000.0], 100)
    assert share_low > 0.5 > 0.1 > share_high and jsd_low > jsd_high


def test_heterogeneity_is_the_mean_jensen_shannon_divergence_from_the_pooled_distribution():
    def jsd(p, q):  # the definition, in bits
        p, q = np.asarray(p, float) / sum(p), np.asarray(q, float) / sum(q)
        m = (p + q) / 2
        kl = lambda a: sum(x * np.log2(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
        return (kl(p) + kl(q)) / 2

    assert partitions.heterogeneity({"A": ["abab"], "B": ["ab", "ba"]}) == pytest.approx(0.0)
    # A: a, a; B: b, b; pooled: a, b half each -> each client's divergence is jsd([1, 0], [.5, .5])
    assert partitions.heterogeneity({"A": ["aa"], "B": ["bb"]}) == pytest.approx(jsd([1, 0], [1, 1]))
    # unequal clients: A = aaab, B = b; pooled = aaabb; every client counts once
    want = (jsd([3, 1], [3, 2]) + jsd([0, 1], [3, 2])) / 2
    assert partitions.heterogeneity({"A": ["aa", "ab"], "B": ["b"], "EMPTY": []}) == pytest.approx(want)
    assert partitions.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)


def test_role_is_more_heterogeneous_than_iid_at_the_same_sizes(plays):
    """The figure grows with the clients' sampling noise too: iid at role's sizes is that floor, role is above it."""
    role = shakespeare.build_federated_text(plays, ["histories"], 0.2, 0, partitions.role(seed=0))
    iid = shakespeare.build_federated_text(plays, ["histories"], 0.2, 0, partitions.iid(seed=0))
    assert role.stats()["data_client_speeches_p50"] == iid.stats()["data_client_speeches_p50"]
    assert role.stats()["data_heterogeneity_jsd"] > iid.stats()["data_heterogeneity_jsd"] > 0


def test_the_partition_is_part_of_the_data_cache_key(tmp_path, monkeypatch):
    small = _numbered_plays()
    monkeypatch.setattr(shakespeare, "load_plays", lambda: small)
    texts = {
        name: shakespeare.load_federated_text([], 0.25, 0, str(tmp_path), make(0)) for name, make in PARTITIONS.items()
    }
    assert len(list((tmp_path / "data").iterdir())) == len(PARTITIONS)  # one file each
    assert len({tuple(sorted(t.train)) for t in texts.values()}) == len(PARTITIONS)
    other_alpha = shakespeare.load_federated_text([], 0.25, 0, str(tmp_path), partitions.dirichlet(40, 5.0, seed=0))
    assert len(list((tmp_path / "data").iterdir())) == len(PARTITIONS) + 1 and other_alpha != texts["dirichlet"]
    monkeypatch.setattr(shakespeare, "load_plays", lambda: pytest.fail("dealt again instead of reading the cache"))
    for name, make in PARTITIONS.items():
        assert shakespeare.load_federated_text([], 0.25, 0, str(tmp_path), make(0)) == texts[name]
