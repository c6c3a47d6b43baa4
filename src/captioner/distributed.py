"""Training on several processes (Lightning DDP): which process am I, and what all of them must share.

Three ways to start a multi-process run (docs in the README):
- ``captioner train ... --set train.devices=2``: Lightning starts the other processes itself (one machine);
- ``torchrun --nproc-per-node 2 [--nnodes N ...] -m captioner.cli train ...``;
- SLURM: ``srun captioner train ...`` with one task per process.

Under torchrun and SLURM every process starts at once, so the process group is joined early
(:func:`join_early`), before the feature cache is read: the ranks then share the extraction and wait for each
other. Lightning's DDP strategy reuses that process group.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist

from captioner.errors import CaptionerError


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) outside a multi-process run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cluster_environment():
    """Lightning's description of the torchrun or SLURM job that started this process with others, or None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for kind in (TorchElasticEnvironment, SLURMEnvironment):
        if kind.detect():
            env = kind()
            if env.world_size() > 1:
                return env
    return None


def join_early(backend: str) -> None:
    """Join the other processes now, when torchrun or SLURM started several (no-op otherwise)."""
    env = cluster_environment()
    if env is None or dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    dist.init_process_group(backend, rank=env.global_rank(), world_size=env.world_size())


def processes_per_node(devices) -> tuple[int | str, int]:
    """(devices per node, nodes) for the Trainer: what torchrun/SLURM says, else the config's ``devices``."""
    env = cluster_environment()
    if env is None or devices not in ("auto", None):
        return devices, max(1, env.world_size() // int(devices)) if env is not None else 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or env.world_size())
    return per_node, max(1, env.world_size() // per_node)


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def merge_dicts(part: dict) -> dict:
    """Every process's ``part`` merged into one dict, on every process."""
    world = rank_and_world()[1]
    if world == 1:
        return part
    parts: list = [None] * world
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


@contextmanager
def fail_together() -> Iterator[None]:
    """Run the block in every process, then wait for all of them (a barrier); a :class:`CaptionerError` raised
    in the block by any process is raised by every process, so that none waits forever for one that stopped."""
    error = None
    try:
        yield
    except CaptionerError as e:
        error = e
    errors = merge_dicts({rank_and_world()[0]: str(error)} if error else {})
    if error is not None:
        raise error
    if errors:
        raise CaptionerError(errors[min(errors)])


def spread(value: float) -> float:
    """max - min of ``value`` over the processes (0.0 in a single process)."""
    world = rank_and_world()[1]
    if world == 1:
        return 0.0
    import torch

    values = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
    dist.all_gather(values, torch.tensor(value, dtype=torch.float64))
    return float(max(values) - min(values))
