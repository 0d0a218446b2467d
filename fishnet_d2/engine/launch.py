"""``launch``: Detectron2's ``detectron2.engine.launch``, which also runs on machines without a GPU.

Without a GPU, the processes are CPU workers that communicate through GLOO, so ``--num-gpus 2``
trains with 2 CPU processes (with ``MODEL.DEVICE cpu``). Detectron2 main's launcher does that
itself; on v0.6 :mod:`fishnet_d2.backports` does it as main does.
"""

import functools
import os
from datetime import timedelta
from typing import Any, Callable, Optional, Tuple

import torch

from ..backports import launch as d2_launch

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
    if world_size > 1 and not torch.cuda.is_available():
        if dist_url is None:
            raise ValueError("dist_url=None: a multi-process launch needs 'tcp://IP:PORT', 'file://PATH' or 'auto'")
        if dist_url == "auto" and num_machines != 1:
            raise ValueError(f"dist_url='auto' works on one machine only, not num_machines={num_machines}")
        main_func = functools.partial(_share_cores, main_func, num_gpus_per_machine)
    d2_launch(
        main_func,
        num_gpus_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=args,
        timeout=timeout,
    )


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
