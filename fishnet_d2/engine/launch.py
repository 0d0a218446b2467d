"""``launch``: Detectron2's ``detectron2.engine.launch``, which also runs on machines without a GPU.

Detectron2 v0.6's launcher asserts that CUDA is available and always uses the NCCL backend; newer
Detectron2 picks GLOO when there is no GPU. This launcher hands everything to Detectron2's when it
can (a GPU is present, or a single process is asked for) and otherwise starts the processes itself
with the GLOO backend, setting up what Detectron2's launcher sets up, so ``--num-gpus 2`` trains
with 2 CPU processes (with ``MODEL.DEVICE cpu``).
"""

import logging
import os
from datetime import timedelta
from typing import Any, Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["launch", "launch_from_args"]

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
    if world_size == 1 or torch.cuda.is_available():
        d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if dist_url is None:
        raise ValueError("dist_url=None: a multi-process launch needs 'tcp://IP:PORT', 'file://PATH' or 'auto'")
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError(f"dist_url='auto' works on one machine only, not num_machines={num_machines}")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


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


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Tuple,
    timeout: timedelta,
) -> None:
    global_rank = machine_rank * num_procs_per_machine + local_rank
    if "OMP_NUM_THREADS" not in os.environ:
        # Share the cores among the processes (torchrun sets OMP_NUM_THREADS for the same reason):
        # threads that compete for cores only slow each other down.
        torch.set_num_threads(max(1, torch.get_num_threads() // num_procs_per_machine))
    try:
        dist.init_process_group(
            backend="GLOO", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    # The group of the processes on this machine, which comm.get_local_rank() / get_local_size()
    # read; Detectron2's launcher (v0.6 and later) keeps it in the same module attribute.
    num_machines = world_size // num_procs_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_procs_per_machine, (i + 1) * num_procs_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    main_func(*args)
