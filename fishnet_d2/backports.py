"""Detectron2 main's behaviour on Detectron2 v0.6: every difference between the two in one place.

On detectron2 main the names below are Detectron2's own objects, and nothing here runs. On v0.6
they are small subclasses and functions that do what main does, each with the main code it
stands for. Dropping v0.6 support is deleting this module and importing the four names from
Detectron2.

The check: ``detectron2.utils.comm.create_local_process_group`` exists in main (since 2022) and
not in v0.6; main still reports ``__version__ == "0.6"``, so the version string cannot tell them
apart.

Besides the four names, :func:`detectron2_export_modules` gives ``detectron2.export``'s tracing
and scripting modules, which v0.6 cannot import as a package (its ``__init__`` imports caffe2),
and :data:`DETECTRON2_EXPORT_SOURCE` says where it takes them from; :func:`padding_constraints` and
:func:`uses_sigmoid_class_scores` read two settings main added (v0.6 has their defaults).
"""

import importlib
import logging
import sys
import types
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlparse

import detectron2
import detectron2.checkpoint
import detectron2.engine
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = [
    "DETECTRON2_EXPORT_SOURCE",
    "DefaultTrainer",
    "DetectionCheckpointer",
    "create_local_process_group",
    "detectron2_export_modules",
    "launch",
    "padding_constraints",
    "uses_sigmoid_class_scores",
]

DETECTRON2_V0_6 = not hasattr(comm, "create_local_process_group")

if not DETECTRON2_V0_6:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import DefaultTrainer, launch
    from detectron2.utils.comm import create_local_process_group

    DETECTRON2_EXPORT_SOURCE = "detectron2.export"

    def detectron2_export_modules() -> Tuple[types.ModuleType, types.ModuleType]:
        """``detectron2.export.flatten`` and ``detectron2.export.torchscript``."""
        return (
            importlib.import_module("detectron2.export.flatten"),
            importlib.import_module("detectron2.export.torchscript"),
        )

    def padding_constraints(backbone: torch.nn.Module) -> Dict[str, int]:
        """``Backbone.padding_constraints`` (square padding, a divisibility other than the backbone's)."""
        return backbone.padding_constraints

    def uses_sigmoid_class_scores(box_predictor: torch.nn.Module) -> bool:
        """``FastRCNNOutputLayers.use_sigmoid_ce``: class scores by sigmoid, not softmax."""
        return box_predictor.use_sigmoid_ce

else:
    DETECTRON2_EXPORT_SOURCE = (
        "detectron2.export.flatten and .torchscript, without the package (v0.6: it imports caffe2)"
    )

    def detectron2_export_modules() -> Tuple[types.ModuleType, types.ModuleType]:
        """v0.6's ``detectron2.export.flatten`` and ``.torchscript``, which need only torch and
        Detectron2, loaded without the package's ``__init__`` (it imports caffe2, which current
        torch no longer ships; main's does not): under a bare ``detectron2.export`` package (the
        directory, no code run) that stays in ``sys.modules``, where the modules look themselves up
        when they script. Importing them applies Detectron2's TorchScript patches, as on main.
        ImportError, saying so, when they do not load."""
        if "detectron2.export" not in sys.modules:
            package = types.ModuleType("detectron2.export", "v0.6's detectron2.export without its __init__")
            package.__path__ = [str(Path(detectron2.__file__).parent / "export")]
            sys.modules["detectron2.export"] = package
        try:
            return (
                importlib.import_module("detectron2.export.flatten"),
                importlib.import_module("detectron2.export.torchscript"),
            )
        except Exception as e:
            raise ImportError(
                "v0.6's detectron2.export imports caffe2, which current torch no longer ships, and its "
                f"TorchScript modules did not load without it: {type(e).__name__}: {e}"
            ) from e

    class DefaultTrainer(detectron2.engine.DefaultTrainer):
        """v0.6's DefaultTrainer, whose checkpoints also hold the optimizer's state (its
        ``SimpleTrainer``'s), as main's ``DefaultTrainer.state_dict`` / ``load_state_dict`` do: a
        resumed run keeps SGD's momentum instead of restarting it from zero."""

        def state_dict(self) -> Dict:
            state = super().state_dict()
            state["_trainer"] = self._trainer.state_dict()
            return state

        def load_state_dict(self, state_dict: Dict) -> None:
            super().load_state_dict(state_dict)
            self._trainer.load_state_dict(state_dict["_trainer"])

    class DetectionCheckpointer(detectron2.checkpoint.DetectionCheckpointer):
        """v0.6's DetectionCheckpointer with main's ``?matching_heuristics=True`` on a path, and
        main's ``_torch_load`` hook: ``load`` keeps the query, ``_load_file`` applies it to a
        torch file (``.pkl`` and ``.pyth`` always use the heuristics where they need them)."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._parsed_url_during_load = None

        def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
            assert self._parsed_url_during_load is None
            if path:
                parsed_url = urlparse(path)
                self._parsed_url_during_load = parsed_url
                path = parsed_url._replace(query="").geturl()  # remove query from filename
            try:
                return super().load(path, *args, **kwargs)
            finally:
                self._parsed_url_during_load = None

        def _load_file(self, filename: str) -> Dict[str, Any]:
            if filename.endswith((".pkl", ".pyth")):
                return super()._load_file(filename)
            loaded = self._torch_load(filename)
            if "model" not in loaded:
                loaded = {"model": loaded}
            assert self._parsed_url_during_load is not None, "`_load_file` must be called inside `load`"
            parsed_url = self._parsed_url_during_load
            queries = parse_qs(parsed_url.query)
            if queries.pop("matching_heuristics", "False") == ["True"]:
                loaded["matching_heuristics"] = True
            if len(queries) > 0:
                raise ValueError(
                    f"Unsupported query remaining: f{queries}, orginal filename: {parsed_url.geturl()}"
                )
            return loaded

        def _torch_load(self, f: str) -> Any:
            return super()._load_file(f)

    def launch(
        main_func: Callable[..., Any],
        num_gpus_per_machine: int,
        num_machines: int = 1,
        machine_rank: int = 0,
        dist_url: Optional[str] = None,
        args: Tuple = (),
        timeout: timedelta = timedelta(minutes=30),
    ) -> None:
        """v0.6's ``launch``, which also runs without a GPU, as main's does: the processes are CPU
        workers that communicate through GLOO (v0.6 asserts CUDA and always uses NCCL)."""
        world_size = num_gpus_per_machine * num_machines
        if world_size == 1 or torch.cuda.is_available():
            detectron2.engine.launch(
                main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url, args, timeout
            )
            return
        if dist_url == "auto":
            assert num_machines == 1, "dist_url=auto not supported in multi-machine jobs."
            dist_url = f"tcp://127.0.0.1:{_free_port()}"
        mp.spawn(
            _cpu_worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
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
        """Main's ``_distributed_worker`` without a GPU: GLOO, and the local process group that
        main's ``comm.create_local_process_group`` makes (v0.6 keeps it in the same attribute)."""
        global_rank = machine_rank * num_procs_per_machine + local_rank
        try:
            dist.init_process_group(
                backend="GLOO", init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
            )
        except Exception:
            logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
            raise
        create_local_process_group(num_procs_per_machine)
        comm.synchronize()
        main_func(*args)

    def create_local_process_group(num_workers_per_machine: int) -> None:
        """Main's ``comm.create_local_process_group``: the process group of this machine's ranks
        (v0.6 keeps it in the same attribute), made by every rank together."""
        world_size = comm.get_world_size()
        if world_size % num_workers_per_machine:
            raise ValueError(f"num_workers_per_machine={num_workers_per_machine}: must divide the world size, {world_size}")
        machine_rank = comm.get_rank() // num_workers_per_machine
        for i in range(world_size // num_workers_per_machine):
            group = dist.new_group(list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group

    def padding_constraints(backbone: torch.nn.Module) -> Dict[str, int]:
        """Main's ``Backbone.padding_constraints``: v0.6 has none (its images are padded to
        ``size_divisibility`` only)."""
        return {}

    def uses_sigmoid_class_scores(box_predictor: torch.nn.Module) -> bool:
        """Main's ``FastRCNNOutputLayers.use_sigmoid_ce``: v0.6's class scores are always a softmax."""
        return False
