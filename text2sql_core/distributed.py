"""The distributed runtime: one process per device, started by torchrun, and the rank rules every stage follows.

A step started by ``t2s torchrun`` (the chart does this when ``gpus > 1`` or ``nodes > 1``) runs the
same stage code in every process. :func:`init` reads the torchrun environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group: NCCL
with one GPU per local rank on CUDA, gloo on CPU. In a plain single process it does nothing and
every helper here is the identity, so stage code calls them unconditionally.

Rank rules (docs/distributed.md has the long form):

- batch sizes in the run config are *global*: :func:`split_batch` divides one over the ranks and
  refuses a size the world size does not divide (``BadInput`` naming the field, exit 2);
- trainers give every rank a disjoint shard of each planned batch (:func:`shard`), all-reduce
  gradients (DDP or :func:`all_reduce_gradients`) and log global values (:func:`all_reduce_mean`);
- inference shards its prompts (:func:`shard_indices`) and rank 0 puts the results back in
  dataset order (:func:`gather_in_order`);
- only global rank 0 publishes outputs, checkpoints and manifests; the others wait at a barrier.

Every collective has a timeout (``T2S_COLLECTIVE_TIMEOUT_S``, default 600 s): a rank whose peer died
or hangs fails with :class:`PeerLost` instead of waiting forever.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BadInput, Retryable

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TIMEOUT_ENV",
    "PeerLost",
    "World",
    "all_gather_objects",
    "all_reduce_gradients",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_parameters",
    "finish",
    "gather_in_order",
    "gather_objects",
    "init",
    "shard",
    "shard_indices",
    "split_batch",
    "token_share",
    "wait_for_main",
    "world",
]

TIMEOUT_ENV = "T2S_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
#: how long the other ranks wait for rank 0 to publish (uploading a large model takes a while)
PUBLISH_TIMEOUT_ENV = "T2S_PUBLISH_TIMEOUT_S"
DEFAULT_PUBLISH_TIMEOUT_S = 7200.0

T = TypeVar("T")


class PeerLost(Retryable):
    """Raised when a collective fails or times out: another rank died or hangs (exit 1, the Job retries)."""


@dataclass(frozen=True)
class World:
    """Where this process sits: global rank, world size, rank on this node and the device it owns."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one process that publishes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadInput(f"{name}={value!r} is not an integer (set by torchrun)", field=name) from None


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{name}={raw!r} is not a number of seconds", field=name) from None
    if value <= 0:
        raise BadInput(f"{name} must be > 0 seconds, got {raw}", field=name)
    return value


def timeout_s() -> float:
    """The collective timeout in seconds (``T2S_COLLECTIVE_TIMEOUT_S``)."""
    return _seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def _from_env() -> World:
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if not 0 <= rank < max(size, 1):
        raise BadInput(f"RANK={rank} is outside WORLD_SIZE={size}", field="RANK")
    device = "cpu"  # one process: the device is the stage's choice, and torch is not imported for nothing
    if size > 1:  # a rank binds to the GPU of its local rank, when it has one
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return World(rank=rank, size=max(size, 1), local_rank=local_rank, local_size=max(local_size, 1), device=device)


_WORLD: World | None = None
_PATIENT: Any = None  # a gloo group with the publish timeout, for waiting on rank 0


def init() -> World:
    """Join the process group torchrun describes (once per process); a single process gets ``World()``.

    NCCL when this rank has a GPU (it is bound to ``cuda:LOCAL_RANK``), gloo otherwise. Safe to call
    again: later calls return the same world.
    """
    global _WORLD, _PATIENT
    w = _from_env()
    if not w.distributed:
        _WORLD = w
        return w
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if w.device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(w.device)
        try:
            dist.init_process_group(backend=backend, rank=w.rank, world_size=w.size,
                                    timeout=timedelta(seconds=timeout_s()))
        except (RuntimeError, ValueError, dist.DistStoreError) as exc:
            raise PeerLost(f"rank {w.rank} could not join the process group of {w.size} ranks "
                           f"({os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): {exc}") from exc
        _PATIENT = dist.new_group(backend="gloo",
                                  timeout=timedelta(seconds=_seconds(PUBLISH_TIMEOUT_ENV, DEFAULT_PUBLISH_TIMEOUT_S)))
        atexit.register(_leave)
    _WORLD = w
    return w


def _leave() -> None:
    """Tear the process group down before the interpreter does: exiting with gloo's threads still
    attached aborts the process ("terminate called without an active exception", exit -6) after the
    step has already succeeded."""
    import torch.distributed as dist

    # best effort at exit: the step's outcome is already decided
    with contextlib.suppress(Exception):
        if dist.is_initialized():
            dist.destroy_process_group()


def finish(code: int) -> None:
    """End a rank's process with ``code`` without the interpreter's teardown, once it joined a world.

    Exiting normally runs the C++ destructors of gloo's transport threads, and one still attached
    aborts the process ("terminate called without an active exception", exit -6) after the step has
    succeeded and published: seen on the two-pod Indexed Job even with the group torn down at exit.
    So a rank that succeeded waits for the others (no peer is left in a collective), every rank
    flushes its logs and leaves with ``os._exit``. In one process (or before :func:`init`) it returns
    and the caller exits as usual.
    """
    if _WORLD is None or not _WORLD.distributed:
        return
    import logging
    import sys

    if code == 0:
        with contextlib.suppress(Exception):  # a peer that died fails the launch through torchrun anyway
            barrier()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def world() -> World:
    """The world :func:`init` joined; before ``init`` (or in one process) the single-process world."""
    return _WORLD if _WORLD is not None else World()


def _active() -> bool:
    if not world().distributed:
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def _collective(what: str, fn, *args, **kwargs):
    """Run a collective, turning a dead or stuck peer (gloo/NCCL error, timeout) into :class:`PeerLost`."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, timeouts)
        raise PeerLost(f"rank {world().rank}: {what} failed after waiting up to {timeout_s():g} s for the other "
                       f"ranks (a peer died or hangs; {TIMEOUT_ENV} sets the limit): {exc}") from exc


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        import torch.distributed as dist

        if world().device.startswith("cuda"):
            _collective("barrier", dist.barrier, device_ids=[int(world().device.split(":")[1])])
        else:
            _collective("barrier", dist.barrier)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects: decisions, manifests, step numbers)."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    _collective("broadcast", dist.broadcast_object_list, box, src=src)
    return box[0]


def wait_for_main(obj: T) -> T:
    """Like :func:`broadcast_object` from rank 0, with the long publish timeout (``T2S_PUBLISH_TIMEOUT_S``).

    For the other ranks' wait while rank 0 does work alone: publishing, or mining that runs on it only.
    A peer that dies still fails the wait at once (its connection closes).
    """
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    _collective("waiting for rank 0", dist.broadcast_object_list, box, src=0, group=_PATIENT)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world().size
    _collective("all_gather", dist.all_gather_object, out, obj)
    return out


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; ``None`` on the others (they publish nothing)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world().size if world().is_main else None
    _collective("gather", dist.gather_object, obj, out, dst=0)
    return out


def _reduce_tensor(values: torch.Tensor, op: str) -> torch.Tensor:
    import torch.distributed as dist

    t = values.detach().clone()
    if world().device.startswith("cuda"):
        t = t.to(world().device)
    _collective("all_reduce", dist.all_reduce, t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t = t / world().size
    return t.to(values.device)


def all_reduce_sum(values: dict[str, float]) -> dict[str, float]:
    """Sum of each metric over the ranks (counts, token totals); one collective for all of them."""
    if not _active() or not values:
        return dict(values)
    import torch

    keys = sorted(values)  # the same order on every rank
    t = _reduce_tensor(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64), "sum")
    summed = dict(zip(keys, t.tolist(), strict=True))
    return {k: float(summed[k]) for k in values}  # in the caller's order, as in one process


def token_share(tokens: float, w: World | None = None) -> float:
    """This rank's ``tokens`` over the ranks' mean count: the factor that turns a rank's token-mean loss
    into its share of the global token mean (averaged over the ranks: the one-process mean). 1.0 in
    one process; one collective."""
    w = w or world()
    if not w.distributed:
        return 1.0
    total = all_reduce_sum({"tokens": float(tokens)})["tokens"]
    return float(tokens) * w.size / total if total > 0 else 0.0


def all_reduce_mean(values: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """Mean of each metric over the ranks, weighted by ``weight`` (e.g. the rank's sample count).

    With equal shards (the default weight) this is the plain mean; pass each rank's sample count
    so ranks with short last shards do not count as much as full ones.
    """
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    summed = all_reduce_sum({**{k: float(values[k]) * weight for k in keys}, "\0weight": weight})
    total = summed.pop("\0weight")
    return {k: (summed[k] / total if total else 0.0) for k in values}


def all_reduce_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, in place (trainers that do not use DDP).

    Parameters without a gradient on this rank count as zeros, so every rank joins every reduction.
    Gradients travel as one flat buffer per dtype: a handful of collectives, not one per tensor.
    """
    if not _active():
        return
    import torch

    params = [p for p in params if p.requires_grad]
    by_dtype: dict[Any, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        flat = _reduce_tensor(flat, "mean")
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def broadcast_parameters(params: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` (weights, buffers) to every rank, in place."""
    if not _active():
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            t = p.detach().to(world().device) if world().device.startswith("cuda") else p.detach()
            _collective("broadcast", dist.broadcast, t, src=src)
            if t is not p.data and t.data_ptr() != p.data_ptr():
                p.data.copy_(t)


def split_batch(global_size: int, field: str, w: World | None = None) -> int:
    """The per-rank share of a global batch size; a size the world size does not divide is a config error."""
    w = w or world()
    if global_size % w.size:
        raise BadInput(f"is {global_size}, which {w.size} ranks cannot split evenly: batch sizes are global "
                       f"(per-rank = size / ranks); use a multiple of {w.size}", field=field)
    return global_size // w.size


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """This rank's contiguous slice of ``items`` (a planned batch, a step's prompts); slices are disjoint.

    The first ``len(items) % size`` ranks get one item more, so every item lands on exactly one rank
    and the ranks' slices, concatenated in rank order, are ``items``.
    """
    w = w or world()
    start, stop = _bounds(len(items), w)
    return list(items[start:stop])


def _bounds(n: int, w: World) -> tuple[int, int]:
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (1 if w.rank < extra else 0)


def shard_indices(n: int, w: World | None = None) -> range:
    """Indices of this rank's contiguous slice of ``n`` items (see :func:`shard`)."""
    w = w or world()
    start, stop = _bounds(n, w)
    return range(start, stop)


def gather_in_order(local: list[T], n: int) -> list[T] | None:
    """Every rank's results of :func:`shard_indices` ``(n)``, concatenated in dataset order, on rank 0.

    Other ranks get ``None``: they hold nothing to publish. In one process: ``local`` itself.
    """
    w = world()
    start, stop = _bounds(n, w)
    if len(local) != stop - start:
        raise ValueError(f"rank {w.rank} has {len(local)} results for its {stop - start} items")
    if not _active():
        return list(local)
    parts = gather_objects(local)
    if parts is None:
        return None
    return [item for part in parts for item in part]
