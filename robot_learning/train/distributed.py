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


def batches(collate: Callable[[np.ndarray], dict], n: int, batch_size: int, seed: int,
            ranks: Ranks) -> Iterator[dict]:
    """Endless collated batches of this rank's share: ``batch_size`` is the batch of all ranks together."""
    per = max(1, batch_size // ranks.world)
    for idx in shard_indices(n, per, np.random.default_rng(seed), ranks):
        yield collate(idx)


_END = object()  # the end of a finite stream of items


def prefetched(items: Iterator[dict], to_device: Callable[[dict], dict], depth: int = 3) -> Iterator[dict]:
    """``items`` made ready ``depth`` ahead by a thread, each already through ``to_device``.

    On a GPU the collating of the next batches on the CPU (numpy gathers, which release the
    GIL) then runs while the GPU computes the current one, and the copy is issued from pinned
    memory without a wait. On a 2-core CPU the thread would take a core from the step itself,
    so ``train`` uses it on GPUs only. An error in the thread is raised in the consumer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(to_device(item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    threading.Thread(target=work, name="prefetch", daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def agree(flag: bool, ranks: Ranks) -> bool:
    """Rank 0's ``flag`` on every rank (a stop decision all ranks act on at the same step)."""
    if ranks.world == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return bool(t.item())


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
