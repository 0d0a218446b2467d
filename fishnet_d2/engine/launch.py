"""``launch``: Detectron2's ``detectron2.engine.launch``, which also runs on machines without a
GPU, and under torchrun (or any launcher that sets torchrun's environment).

Without a GPU, the processes are CPU workers that communicate through GLOO, so ``--num-gpus 2``
trains with 2 CPU processes (with ``MODEL.DEVICE cpu``). Detectron2 main's launcher does that
itself; on v0.6 :mod:`fishnet_d2.backports` does it as main does.

Started by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` in the environment), this process is one of the workers: it joins
the process group from that environment (NCCL with GPUs, GLOO without), makes Detectron2's local
process group as Detectron2's ``launch`` makes it, and runs ``main_func`` itself. The process group
keeps its keys in torchrun's store under a prefix of this start of the workers
(:mod:`fishnet_d2.engine.rendezvous`), so that workers torchrun restarts never read those of the
workers that died.
"""

import functools
import logging
import multiprocessing
import os
import signal
from datetime import timedelta
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm

from ..backports import create_local_process_group
from ..backports import launch as d2_launch
from .hooks import REQUEUE_EXIT_CODE
from .rendezvous import process_group_store

__all__ = ["launch", "launch_from_args", "started_by_torchrun", "restarted_by_torchrun"]

# What torchrun sets in each worker's environment (and what a SLURM job script can set from
# SLURM's variables, see docs/cluster.md).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = _DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``
    machines, as ``detectron2.engine.launch``; without a GPU, the processes are CPU workers that
    communicate through GLOO (``num_gpus_per_machine`` is then the number of processes).

    Args:
        dist_url: as Detectron2's: "tcp://IP:PORT", "file://PATH", or "auto" (a free local port,
            one machine only).
    """
    if started_by_torchrun():
        if (num_gpus_per_machine, num_machines, machine_rank) != (1, 1, 0):
            raise ValueError(
                f"num_gpus_per_machine={num_gpus_per_machine}, num_machines={num_machines}, machine_rank={machine_rank}: "
                f"started by torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}), the processes are torchrun's; "
                "leave out --num-gpus, --num-machines and --machine-rank (torchrun's --nproc-per-node and --nnodes say how many)"
            )
        _torchrun_worker(main_func, args, timeout)
        return
    for name, value, least in (
        ("num_gpus_per_machine", num_gpus_per_machine, 1),
        ("num_machines", num_machines, 1),
        ("machine_rank", machine_rank, 0),
    ):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name}={value!r}: must be an integer >= {least}")
    if machine_rank >= num_machines:
        raise ValueError(f"machine_rank={machine_rank}: must be below num_machines={num_machines}")
    world_size = num_gpus_per_machine * num_machines
    if world_size > 1 and not torch.cuda.is_available():
        if dist_url is None:
            raise ValueError("dist_url=None: a multi-process launch needs 'tcp://IP:PORT', 'file://PATH' or 'auto'")
        if dist_url == "auto" and num_machines != 1:
            raise ValueError(f"dist_url='auto' works on one machine only, not num_machines={num_machines}")
        main_func = functools.partial(_share_cores, main_func, num_gpus_per_machine)
    if world_size == 1:
        main_func(*args)
        return
    # The workers are this process's children: SIGTERM sent to this process only (Kubernetes
    # signals PID 1) reaches them too; they checkpoint and exit with REQUEUE_EXIT_CODE, which
    # becomes this process's exit status.
    previous = signal.signal(signal.SIGTERM, _forward_sigterm_to_workers)
    try:
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
    except torch.multiprocessing.ProcessExitedException as e:
        if e.exit_code == REQUEUE_EXIT_CODE:
            raise SystemExit(REQUEUE_EXIT_CODE) from e
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _forward_sigterm_to_workers(signum: int, frame: Any) -> None:
    for worker in multiprocessing.active_children():
        os.kill(worker.pid, signal.SIGTERM)


def started_by_torchrun() -> bool:
    """Whether this process is a worker that torchrun started (its variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this worker after a failure (``--max-restarts``):
    ``TORCHELASTIC_RESTART_COUNT`` above 0."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def _torchrun_worker(main_func: Callable[..., Any], args: Tuple, timeout: timedelta) -> None:
    """Detectron2's ``_distributed_worker`` for a process torchrun started: the process group from
    the environment, the local process group, this process's GPU; then ``main_func(*args)``."""
    local_rank, local_world_size = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    has_gpu = torch.cuda.is_available()
    if has_gpu and local_world_size > torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_WORLD_SIZE={local_world_size}: torchrun started more processes on this machine than it has GPUs "
            f"({torch.cuda.device_count()})"
        )
    if not has_gpu and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // local_world_size))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        store = process_group_store(rank, world_size, timeout)
        backend = "NCCL" if has_gpu else "GLOO"
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    except Exception:
        logger = logging.getLogger(__name__)
        logger.error(f"Process group at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, rank {rank} of {world_size}")
        raise
    create_local_process_group(local_world_size)
    if has_gpu:
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        main_func(*args)
        # Every worker is done with the group before any leaves it: a worker that exits early
        # ends its agent, which may be the one hosting torchrun's store.
        comm.synchronize()
    finally:
        dist.destroy_process_group()


def _share_cores(main_func: Callable[..., Any], num_procs_per_machine: int, *args: Any) -> Any:
    """``main_func(*args)`` in a CPU worker, with the machine's cores shared among the workers
    (torchrun sets OMP_NUM_THREADS for the same reason): threads that compete for cores only slow
    each other down."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, torch.get_num_threads() // num_procs_per_machine))
    return main_func(*args)


def launch_from_args(main_func: Callable[..., Any], args: Any) -> None:
    """``launch(main_func, ...)`` with the processes that the command-line ``args`` (from
    Detectron2's ``default_argument_parser``) ask for; ``main_func`` receives ``args``."""
    launch(
        main_func,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
