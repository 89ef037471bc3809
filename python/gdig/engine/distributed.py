"""Several processes on one run, launched by ``torchrun``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`start` joins the process
group (NCCL on GPUs, gloo on CPUs) and :class:`Dist` is what the engine and the stages use:
which rows are this rank's, sums across ranks, and objects shared from rank 0. Without
torchrun (or with one process) every call is a no-op, so one code path serves both.

How the work is split (``docs/METHOD.md``, "Several processes"): the factor sample is
dealt round-robin and the factor statistics (A, S, the EK-FAC diagonal, token and example
counts) are summed; seeds are prepared once on rank 0 and broadcast; store shards are dealt
round-robin and each rank writes its own; rank 0 selects and reports.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gdig.io.errors import UsageError

if TYPE_CHECKING:
    import torch

# A rank waits at most this long for the others (rank 0 prepares the seeds alone; the
# others wait). torch's default of 30 min is too short for a big seed set on a CPU.
TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, items: list[Any]) -> list[Any]:
        """This rank's share of ``items``: every ``world``-th, from ``rank`` (the same
        split in every process and on every resume)."""
        return items[self.rank :: self.world]

    def owns(self, index: int) -> bool:
        return index % self.world == self.rank

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` in place across ranks (float64 stays float64)."""
        if self.active:
            _dist().all_reduce(tensor)
        return tensor

    def sum_int(self, value: int, device: Any = "cpu") -> int:
        if not self.active:
            return value
        import torch

        t = torch.tensor([value], dtype=torch.int64, device=device)
        _dist().all_reduce(t)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        _dist().all_gather_object(out, obj)
        return out

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass anything, e.g. None)."""
        if not self.active:
            return obj
        box = [obj]
        _dist().broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            _dist().barrier()


SINGLE = Dist()


def _dist():
    import torch.distributed

    return torch.distributed


def from_env() -> Dist:
    """The ranks torchrun describes in the environment (one process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UsageError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return Dist(rank, world, local)


def start(device: str) -> Dist:
    """Join torchrun's process group for ``device`` ('cpu' -> gloo, 'cuda...' -> NCCL)."""
    dist = from_env()
    if not dist.active or _dist().is_initialized():
        return dist
    import torch

    if not torch.distributed.is_available():
        raise UsageError("this torch build has no torch.distributed: run without torchrun")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return dist


def rank_device(dist: Dist, device: str) -> str:
    """Each rank's own device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if dist.active and device.startswith("cuda"):
        return f"cuda:{dist.local_rank}"
    return device


def stop(dist: Dist) -> None:
    if dist.active and _dist().is_initialized():
        _dist().destroy_process_group()
