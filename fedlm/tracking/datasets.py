"""What a run trains and evaluates on, as MLflow dataset inputs (the run list's Dataset column, the run page's
Datasets): the training partition ("train") and the eval clients' test splits ("eval"), each a table of clients with
a digest of its text, the source it comes from, and the constants of the data as its profile -- not as metrics,
which are what changes per round. The same constants are tags (`fedlm.data_clients`, …) to filter runs by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.types import ColSpec, Schema

from fedlm.tracking import tags
from fedlm.vocab import RANDOM_GUESS


class ClientsDataset(PandasDataset):
    """One row per client; its profile is the partition's constants and settings, which MLflow's UI shows with it
    (a plain PandasDataset's profile is only its row and cell counts)."""

    def __init__(self, df: pd.DataFrame, source: HTTPDatasetSource, name: str, digest: str, profile: Mapping[str, Any]):
        self._profile = dict(profile)
        super().__init__(df=df, source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    @property
    def schema(self) -> Schema:
        """Given, not inferred: inference warns on every run that integer columns cannot hold missing values."""
        return Schema([ColSpec("string" if c == "client" else "long", c) for c in self.df.columns])


def build(source: Any, eval_client_ids: Sequence[str], eval_sequences: int) -> dict[str, ClientsDataset]:
    """The context ("train", "eval") -> the dataset of a data source (fedlm/data/sources.py) and the eval clients."""
    settings, stats = source.settings(), source.stats()
    url = HTTPDatasetSource(source.url)
    data_stats = {k.removeprefix("data_"): v for k, v in stats.items()}
    train = ClientsDataset(
        pd.DataFrame(source.clients("train")),
        url,
        f"{source.name}-train",
        source.digest("train"),
        data_stats | settings,
    )  # the UI cuts the profile short
    test_clients = source.clients("test", eval_client_ids)
    evaluated = {"clients": len(eval_client_ids), "sequences": eval_sequences}
    if "characters" in test_clients:
        evaluated["characters"] = sum(test_clients["characters"])
    eval_ = ClientsDataset(
        pd.DataFrame(test_clients),
        url,
        f"{source.name}-eval",
        source.digest("test", eval_client_ids),
        evaluated | settings,
    )
    return {"train": train, "eval": eval_}


def constants(source: Any, eval_sequences: int) -> dict[str, str]:
    """The run's constants as tags: the data's statistics, what is evaluated, the random-guess reference."""
    values = source.stats() | {"eval_sequences": eval_sequences} | RANDOM_GUESS
    return {f"{tags.STAT_PREFIX}{k}": f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in values.items()}


def log_inputs(source: Any, eval_client_ids: Sequence[str], eval_sequences: int) -> dict[str, ClientsDataset]:
    """Log the datasets as the active run's inputs and the constants as its tags; the datasets by context."""
    found = build(source, eval_client_ids, eval_sequences)
    for context, dataset in found.items():
        mlflow.log_input(dataset, context=context)
    mlflow.set_tags(constants(source, eval_sequences))
    return found
