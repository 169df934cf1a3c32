"""The communication ledger: the bytes a round sends to its clients and receives from them, read from the TFF
computations the run executes rather than estimated from the model's size.

Down: every `federated_broadcast` in the learning process's `next` (the model weights, a scheduled learning rate,
the aggregator's parameters such as clipping norms), once per sampled client. Up: every client-to-server intrinsic
of the model-update aggregator's own process (`federated_aggregate`, `federated_sum`, `federated_mean`, …): the
encoded update as the aggregator's encoders emit it (`aggregator=compression`: the bit-packed quantized tensors and
their ranges), the weight, the adaptive norms' estimates. Each tensor counts its elements × its dtype's size; a
round's shapes are static, so the bytes per client are fixed for a run. Not counted: the training metrics the
clients send back (TFF sums them outside the aggregator), evaluation, and any wire framing (gRPC, protobuf).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_federated as tff

# Intrinsics by which clients hand values to the server; their first operand is the clients' value.
_UPLOADS = frozenset(
    {
        "federated_aggregate",
        "federated_sum",
        "federated_mean",
        "federated_weighted_mean",
        "federated_secure_sum",
        "federated_secure_sum_bitwidth",
        "federated_secure_modular_sum",
        "federated_max",
        "federated_min",
    }
)
_BROADCAST = "federated_broadcast"


def type_bytes(type_spec: tff.Type) -> int:
    """Bytes of a value of `type_spec`: elements × dtype size of every tensor in it (a placement is looked through)."""
    if isinstance(type_spec, tff.FederatedType):
        return type_bytes(type_spec.member)
    if isinstance(type_spec, tff.TensorType):
        dtype = np.dtype(type_spec.dtype)
        if dtype.kind in "OSU" or type_spec.shape is None or any(d is None for d in type_spec.shape):
            raise ValueError(f"no fixed size: {type_spec}")
        return math.prod(type_spec.shape) * dtype.itemsize
    if isinstance(type_spec, tff.StructType):
        return sum(type_bytes(member) for member in type_spec)
    raise ValueError(f"not a value's type: {type_spec}")


def _intrinsic_calls(block: tff.framework.ComputationBuildingBlock) -> Iterator[tuple[str, tff.Type]]:
    """(intrinsic uri, the type of its operand) of every intrinsic called in `block`, nested computations included."""
    stack = [block]
    while stack:
        node = stack.pop()
        is_intrinsic = isinstance(node, tff.framework.Call) and isinstance(node.function, tff.framework.Intrinsic)
        if is_intrinsic and node.argument is not None:
            yield node.function.uri, node.argument.type_signature
        stack.extend(node.children())


def broadcast_bytes(computation: tff.Computation) -> int:
    """Bytes every client receives in one call of `computation`: the sum of its broadcasts' values."""
    return sum(type_bytes(t) for uri, t in _intrinsic_calls(computation.to_building_block()) if uri == _BROADCAST)


def upload_bytes(computation: tff.Computation) -> int:
    """Bytes every client sends in one call of `computation`: the clients' operands of its upload intrinsics
    (`federated_aggregate`'s and `federated_weighted_mean`'s first two are the value and its weight)."""
    total = 0
    for uri, operand in _intrinsic_calls(computation.to_building_block()):
        if uri not in _UPLOADS:
            continue
        if uri == "federated_weighted_mean":
            total += type_bytes(operand[0]) + type_bytes(operand[1])
        elif isinstance(operand, tff.StructType):  # (value, zero, accumulate, ...) or (value, bitwidth, ...)
            total += type_bytes(operand[0])
        else:
            total += type_bytes(operand)
    return total


class _Recorder:
    """Remembers the aggregation processes TFF creates from the wrapped factory while it builds the learning process:
    the uploads are read from the processes the run executes, without building (tracing) them a second time. One for
    FedAvg's model updates; MimeLite creates two, its clients sending their update and their full gradient."""

    def __init__(self, factory: tff.aggregators.AggregationFactory):
        self._factory = factory
        self.processes: list[tff.templates.AggregationProcess] = []

    def create(self, *types: tff.Type) -> tff.templates.AggregationProcess:
        process = self._factory.create(*types)
        self.processes.append(process)
        return process


class RecordingWeightedFactory(_Recorder, tff.aggregators.WeightedAggregationFactory):
    pass


class RecordingUnweightedFactory(_Recorder, tff.aggregators.UnweightedAggregationFactory):
    pass


def recording(factory: tff.aggregators.AggregationFactory | None, weighted: bool) -> _Recorder:
    """`factory` (None: TFF's mean, as `build_weighted_fed_avg` and `build_unweighted_fed_avg` choose it), recording
    the process it creates."""
    if factory is None:
        factory = tff.aggregators.MeanFactory() if weighted else tff.aggregators.UnweightedMeanFactory()
    if isinstance(factory, tff.aggregators.UnweightedAggregationFactory):
        return RecordingUnweightedFactory(factory)
    return RecordingWeightedFactory(factory)


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Bytes per client each round, and the clients of each round: sampled (sent the model), and reporting (sending
    their update back; None: all the sampled ones). Functions of the round, as the sampler is."""

    down_per_client: int
    up_per_client: int
    clients_in_round: Callable[[int], int]
    clients_reporting: Callable[[int], int] | None = None

    def round_bytes(self, round_num: int) -> tuple[int, int]:
        """(down, up) bytes of round `round_num`; round 0 trains nothing."""
        if round_num == 0:
            return 0, 0
        sampled = self.clients_in_round(round_num)
        reporting = sampled if self.clients_reporting is None else self.clients_reporting(round_num)
        return sampled * self.down_per_client, reporting * self.up_per_client

    def total_bytes(self, round_num: int) -> int:
        """Down and up bytes of rounds 1 … `round_num` (a pure function of the round: resumes need no state)."""
        return sum(sum(self.round_bytes(r)) for r in range(1, round_num + 1))

    def metrics(self, round_num: int) -> dict[str, float]:
        """fedlm's names: comm_down_bytes, comm_up_bytes (this round), comm_total_bytes (so far)."""
        down, up = self.round_bytes(round_num)
        return {"comm_down_bytes": down, "comm_up_bytes": up, "comm_total_bytes": self.total_bytes(round_num)}


def build_ledger(
    learning_process: tff.learning.templates.LearningProcess,
    aggregator: _Recorder,
    clients_in_round: Callable[[int], int],
    clients_reporting: Callable[[int], int] | None = None,
) -> Ledger:
    """The ledger of `learning_process`, whose model updates the recorded `aggregator` aggregates: the model sent to
    `clients_in_round(r)` clients, updates back from `clients_reporting(r)` (None: the same clients)."""
    if not aggregator.processes:
        raise ValueError("the learning process was not built with this aggregator")
    up = sum(upload_bytes(process.next) for process in aggregator.processes)
    return Ledger(broadcast_bytes(learning_process.next), up, clients_in_round, clients_reporting)
