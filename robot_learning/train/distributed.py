"""Data-parallel training under ``torchrun``: each rank does its own share of the work, and no
rank sits in a collective waiting for another one's long job.

- Every epoch is one permutation of the windows, the same on every rank (seeded alike), dealt
  out in turn: each rank trains on a disjoint shard and together they cover the epoch once.
  (Slicing each rank's own permutation, as ``train`` did before, let ranks draw the same
  windows and skip others.)
- Evaluation is shared too: each rank rolls out its part of the seeds and takes its part of
  the validation windows, and the results are gathered. Only the checkpoint is rank 0's; the
  others wait seconds for it, not the minutes of a whole evaluation that a collective's
  timeout may not allow.
- A time budget is rank 0's clock, passed to every rank each step, so all stop at one step.
- On GPUs each process takes ``cuda:LOCAL_RANK`` before anything is allocated.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def lead(self) -> bool:
        return self.rank == 0


def init() -> Ranks:
    """This process's place (torchrun's environment), the process group started when there are
    several: NCCL on GPUs, gloo on CPUs."""
    import torch
    import torch.distributed as dist

    ranks = Ranks(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if ranks.world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(ranks.local_rank)  # before NCCL: otherwise every rank lands on cuda:0
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return ranks


def close(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def shard_indices(n: int, per_rank: int, rng: np.random.Generator, ranks: Ranks) -> Iterator[np.ndarray]:
    """Endless batches of window indices for this rank: ``per_rank`` each, from this rank's
    shard of every epoch's permutation. ``rng`` must be seeded alike on every rank. A dataset
    smaller than one batch of every rank is sampled with replacement (each rank its own draw)."""
    if n < per_rank * ranks.world:
        own = np.random.default_rng(rng.integers(2**63) + ranks.rank)
        while True:
            yield own.integers(0, n, per_rank)
    while True:
        order = rng.permutation(n)
        shard = order[ranks.rank::ranks.world][: n // ranks.world]  # equal shards: equal steps
        for b in range(0, len(shard) - per_rank + 1, per_rank):
            yield shard[b:b + per_rank]


def batch_indices(n: int, batch_size: int, seed: int, ranks: Ranks) -> Iterator[np.ndarray]:
    """This rank's batches of window indices; ``batch_size`` is the batch of all ranks together."""
    return shard_indices(n, max(1, batch_size // ranks.world), np.random.default_rng(seed), ranks)


def prefetched(jobs: Iterator, make: Callable[[object], dict], workers: int = 1, depth: int = 0) -> Iterator[dict]:
    """``make(job)`` for each of ``jobs``, in order, made ``depth`` ahead (default: two per
    worker) by ``workers`` threads.

    On a GPU the collating of the next batches on the CPU (numpy gathers and copies, which
    release the GIL) then runs while the GPU computes the current one, and the copy is issued
    from pinned memory without a wait; several threads keep up with a GPU that one could not.
    On a 2-core CPU the threads would take cores from the step itself, so ``train`` uses this
    on GPUs only. An error, in ``jobs`` or in ``make``, is raised in the consumer at its turn."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    depth = depth or 2 * workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="prefetch")
    pending: deque = deque()
    jobs = iter(jobs)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < depth:
                try:
                    pending.append(pool.submit(make, next(jobs)))
                except StopIteration:
                    exhausted = True
                except Exception as e:  # raised after the batches made before it
                    pending.append(e)
                    exhausted = True
            if not pending:
                return
            item = pending.popleft()
            if isinstance(item, Exception):
                raise item
            yield item.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def agree(value: float, ranks: Ranks) -> float:
    """Rank 0's ``value`` on every rank: the clock that all ranks stop by and that the learning
    rate follows (each rank's own would drift apart, and so would their optimizer steps)."""
    if ranks.world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return float(t.item())


def mine(items: list, ranks: Ranks) -> list:
    """This rank's part of a list of work items (evaluation seeds, validation windows)."""
    return items[ranks.rank::ranks.world]


def gather(values: list, ranks: Ranks) -> list:
    """Every rank's ``values``, concatenated in rank order, on every rank."""
    if ranks.world == 1:
        return list(values)
    import torch.distributed as dist

    out: list = [None] * ranks.world
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]


def checksum(module) -> str:
    """A short digest of a module's parameters and buffers: equal on every rank when they agree."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
