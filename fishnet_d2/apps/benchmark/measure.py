"""What the benchmark measures: wall time, peak tensor memory, FLOPs, parameters."""

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from typing import Any, Callable, Dict

import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn
from torch.profiler import ProfilerActivity, profile

__all__ = ["wall_time", "peak_memory", "count_flops", "count_parameters"]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def wall_time(fn: Callable[[], Any], device: str) -> float:
    """Seconds ``fn()`` takes, with the GPU's queued work included (synchronized around)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: str) -> int:
    """The most bytes of tensor memory that ``fn()`` had allocated at one time, over what was
    allocated before it ran: activations kept for backward, temporaries, gradients.

    On a GPU, from the CUDA caching allocator's statistics (``torch.cuda.max_memory_allocated``).
    On the CPU, from the PyTorch profiler's record of every CPU tensor allocation and free
    while ``fn`` ran (``profile_memory=True``): the peak of the bytes allocated by ``fn`` and
    not yet freed. Neither counts what an allocator keeps cached, what libraries allocate
    outside PyTorch (e.g. oneDNN's scratch memory), nor the Python process itself.
    """
    if device.startswith("cuda"):
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)  # the only record of the addresses
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted(
        (e["ts"], i, e["args"]["Addr"], e["args"]["Bytes"])
        for i, e in enumerate(events)
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0  # CPU
    )
    if not memory:
        raise RuntimeError("the PyTorch profiler recorded no CPU memory events; cannot measure")
    live: Dict[int, int] = {}
    current = peak = 0
    for _, _, address, nbytes in memory:
        if nbytes > 0:
            live[address] = nbytes
            current += nbytes
            peak = max(peak, current)
        elif address in live:  # frees of memory allocated before fn ran do not count
            current -= live.pop(address)
    return peak


# fvcore counts convolutions, matrix products, up-sampling, adaptive pooling and normalization,
# not elementwise ops or max-pooling. Detectron2's FlopCountAnalysis leaves normalization out
# too: so here (FrozenBN is an elementwise affine in training anyway).
_UNCOUNTED = ("aten::batch_norm",)


class _DetectorOnTensor(nn.Module):
    """A Detectron2 detector as a function of one image tensor returning tensors (what fvcore's
    jit tracing needs)."""

    def __init__(self, model: nn.Module, height: int, width: int):
        super().__init__()
        self.model, self.height, self.width = model, height, width

    def forward(self, image: torch.Tensor):
        (result,) = self.model([{"image": image, "height": self.height, "width": self.width}])
        instances = result["instances"]
        outputs = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
        return outputs + ((instances.pred_masks,) if instances.has("pred_masks") else ())


def count_flops(model: nn.Module, inputs: Any) -> Dict[str, Any]:
    """FLOPs of one forward, as fvcore counts them: one multiply-add is one flop, as the FishNet
    and ResNet papers count. ``inputs``: a tensor (backbone) or a Detectron2 model's input list
    of one image. Returns ``{"total": ..., "uncounted_ops": [...]}``."""
    if isinstance(inputs, list):
        (item,) = inputs
        model, inputs = _DetectorOnTensor(model, item["height"], item["width"]), item["image"]
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**{op: None for op in _UNCOUNTED})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = float(analysis.total())
        uncounted = sorted(analysis.unsupported_ops())
    return {"total": total, "uncounted_ops": uncounted}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
