"""What things are called in MLflow, so that runs, models and metrics tell themselves apart at a glance: metric names,
run names (a sweep child by its swept values, `adam · uniform`; a single run by a summary, `fedavg sgd→sgd 10c`),
override values as typed minus Hydra's escaping, and the Markdown descriptions of runs, sweeps and models.

Light (Hydra's override parser, no MLflow): the sweep callback names the parent run in Hydra's launching process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from fedlm.conf.schema import RANDOM_INIT, is_machine_key, unused_groups

SEP = " · "  # between the parts of a run name: no `=`, no spaces to mistake for a separator

# fedlm's metric names -> MLflow's. MLflow's chart view makes a section of each prefix before a `/` (and puts its
# own system metrics under `system/`): `train/...` and `eval/...` are two sections instead of one list of 20.
_RENAMED = {
    "round_seconds": "train/seconds",
    "client_learning_rate": "train/client_learning_rate",  # logged with a schedule only: else a param
    "server_learning_rate": "train/server_learning_rate",
}
EVAL_LOSS, EVAL_ACCURACY, EVAL_PERPLEXITY = "eval/loss", "eval/accuracy", "eval/perplexity"
COMM_TOTAL_BYTES = "comm/total_bytes"  # the bytes down and up of the rounds so far (fedlm/fl/communication.py)
PRIVACY_EPSILON = "privacy_epsilon"  # aggregator=dp: the epsilon spent after each round (fedlm/fl/privacy.py)


def metric(name: str) -> str:
    """`eval_loss` -> `eval/loss`, `train_bits_per_char` -> `train/bits_per_char`, `comm_up_bytes` -> `comm/up_bytes`;
    `round_seconds` -> `train/seconds` (the training time of the round), `client_learning_rate` ->
    `train/client_learning_rate`."""
    if name in _RENAMED:
        return _RENAMED[name]
    split, _, rest = name.partition("_")
    return f"{split}/{rest}" if split in ("train", "eval", "comm") and rest else name


def fedlm_metric(name: str) -> str:
    """The inverse of `metric`: MLflow's name -> fedlm's."""
    return {v: k for k, v in _RENAMED.items()}.get(name) or name.replace("/", "_", 1)


# Words of a key, shortened in run names (the client optimizer is the `optimizer` group).
_SHORT = {
    "optimizer": "client",
    "server_optimizer": "server",
    "learning_rate": "lr",
    "schedule": "client schedule",
    "server_schedule": "server schedule",
}


@dataclasses.dataclass(frozen=True)
class Override:
    """A command-line override, parsed: `key` without `+`/`~`, `value` as Hydra reads it (no escaping)."""

    key: str
    value: Any

    @property
    def text(self) -> str:
        """The value as text: strings as they are (`sqlite:////x.db`, not `sqlite\\:////x.db`), the rest as JSON."""
        return self.value if isinstance(self.value, str) else json.dumps(self.value)


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """A job's overrides (`hydra.overrides.task`: never sweeps, Hydra expanded them), parsed by Hydra's parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [Override(o.key_or_group, o.value()) for o in OverridesParser.create().parse_overrides(list(overrides))]


def label(key: str) -> str:
    """A key as a run name shows it: `optimizer.learning_rate` -> `client lr`, `schedule.warmup_rounds` -> `client
    schedule warmup_rounds`; a group or top-level key as it is."""
    return " ".join(_SHORT.get(part, part) for part in key.split(".")) if "." in key else key


def show(value: Any) -> str:
    """A value as a run name shows it: floats to 3 significant digits (a trial's 0.38123456 is `0.381`)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return value if isinstance(value, str) else json.dumps(value)


def _part(o: Override, groups: Collection[str]) -> str:
    return show(o.value) if o.key in groups else f"{label(o.key)}={show(o.value)}"


def child_name(overrides: Sequence[str], swept_keys: Collection[str], groups: Collection[str]) -> str | None:
    """A sweep job's name: its values of the swept keys, options by name (`adam · uniform`), keys by label
    (`client lr=0.381 · local_epochs=2`); machine-local keys never. None if none of its overrides is swept."""
    parts = [_part(o, groups) for o in parse_overrides(overrides) if o.key in swept_keys and not is_machine_key(o.key)]
    return SEP.join(parts) or None


def run_summary(choices: Mapping[str, Any], clients_per_round: int, overrides: Sequence[str]) -> str:
    """A single run's name: algorithm, client → server optimizer (with a schedule: `sgd(cosine)`), clients per round
    (`fedavg sgd→sgd 10c`; FedSGD's clients take no step: `fedsgd →sgd 10c`), after the experiment file if any
    (`tutorial: …`), then the other options chosen on the command line (`… dp`)."""
    client = "" if "optimizer" in unused_groups(choices) else _optimizer(choices, "optimizer", "schedule")
    summary = (
        f"{choices.get('algorithm')} {client}→"
        f"{_optimizer(choices, 'server_optimizer', 'server_schedule')} {clients_per_round}c"
    )
    shown = {"algorithm", "optimizer", "server_optimizer", "schedule", "server_schedule", "experiment"}
    extra = [
        show(o.value)
        for o in parse_overrides(overrides)
        if o.key in choices and o.key not in shown and not is_machine_key(o.key) and o.value is not None
    ]
    experiment = choices.get("experiment")
    return f"{experiment}: " * bool(experiment) + " ".join([summary, *extra])


def _optimizer(choices: Mapping[str, Any], group: str, schedule_group: str) -> str:
    """`sgd`, or with a schedule other than constant `sgd(cosine)`."""
    schedule = choices.get(schedule_group)
    return f"{choices.get(group)}({schedule})" if schedule not in (None, "constant") else f"{choices.get(group)}"


def sweep_name(swept_keys: Sequence[str], experiment: str | None) -> str:
    """A sweep parent's name: what it varies (`optimizer × client_weighting`), after the experiment file if any
    (`optuna: client lr × …`). The run list marks it a parent already (its expand button): no `sweep` in it."""
    keys = " × ".join(label(k) for k in swept_keys if not is_machine_key(k)) or "sweep"
    return f"{experiment}: {keys}" if experiment else keys


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def figures_table(columns: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    """A Markdown table: one row per metric key, one column per heading (`round 0`, `round 10`)."""
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| `{k}` | " + " | ".join(_figure(c.get(k)) for c in columns.values()) + " |" for k in keys]
    return "\n".join(lines)


def runs_table(rows: Sequence[tuple[str, Mapping[str, float]]], keys: Sequence[str]) -> str:
    """A Markdown table: one row per run (name, metrics), one column per metric key."""
    lines = ["| run | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_figure(m.get(k)) for k in keys) + " |" for name, m in rows]
    return "\n".join(lines)


def _start(cfg: Any) -> str:
    """Where the run's weights start, in words."""
    if cfg.model.init is None:
        return "its pretrained start"
    if cfg.model.init == RANDOM_INIT:
        return f"a random initialization (seed {cfg.seed})"
    return f"`{cfg.model.init}`"


def _schedule(node: Any, choice: str | None) -> str:
    """`, cosine schedule, 2 warm-up rounds` after a learning rate; nothing for a constant one."""
    parts = [f"`{choice}` schedule"] if choice not in (None, "constant") else []
    if node is not None and node.get("warmup_rounds"):
        parts.append(f"{node.get('warmup_rounds')} warm-up rounds")
    return "".join(f", {p}" for p in parts)


def setup_line(cfg: Any, choices: Mapping[str, Any]) -> str:
    """What the run does, in a sentence: the options chosen and the keys that matter most."""
    batches = "all" if cfg.max_batches_per_client is None else f"at most {cfg.max_batches_per_client}"
    client = (
        "no client optimizer (a gradient at the server model)"
        if "optimizer" in unused_groups(choices)
        else f"client `{choices.get('optimizer')}` (lr {cfg.optimizer.get('learning_rate')}"
        f"{_schedule(cfg.get('schedule'), choices.get('schedule'))})"
    )
    return (
        f"{cfg.rounds} rounds of `{choices.get('algorithm')}`, {cfg.clients_per_round} clients a round "
        f"(`{choices.get('sampling')}` sampling, `{choices.get('client_weighting')}` weighting, "
        f"`{choices.get('aggregator')}` aggregation), {cfg.local_epochs} local epoch(s) of {batches} batches; "
        f"{client} → server `{choices.get('server_optimizer')}` "
        f"(lr {cfg.server_optimizer.get('learning_rate')}"
        f"{_schedule(cfg.get('server_schedule'), choices.get('server_schedule'))}); model "
        f"`{choices.get('model')}` from {_start(cfg)}; data `{choices.get('data')}` "
        f"(`{choices.get('partition', 'role')}` partition), seed {cfg.seed}; "
        f"`{choices.get('eval')}` evaluation of {cfg.eval_clients} clients every {cfg.eval_every} rounds."
    )


def run_description(
    name: str,
    setup: str,
    overrides: Sequence[str],
    start: Mapping[str, float] | None = None,
    end: Mapping[str, float] | None = None,
    end_round: int | None = None,
    model_uri: str | None = None,
) -> str:
    """A run's description (Markdown): its name and setup, its overrides (but machine-local ones: tags), then, once
    it has finished, its eval figures at the start and the end, and how to load its model."""
    shown = " ".join(f"{o.key}={o.text}" for o in parse_overrides(overrides) if not is_machine_key(o.key))
    text = f"**{name}**: {setup}\n\nOverrides: `{shown or 'none'}`"
    if start is not None and end is not None:
        keys = [EVAL_LOSS, EVAL_ACCURACY, EVAL_PERPLEXITY]
        text += "\n\n" + figures_table({"round 0 (start)": start, f"round {end_round} (end)": end}, keys)
    if model_uri is not None:
        text += f'\n\nModel (Keras, ids → logits): `mlflow.tensorflow.load_model("{model_uri}")`'
    return text
