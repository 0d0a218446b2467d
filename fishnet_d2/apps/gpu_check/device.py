"""The device the check runs on: whether CUDA is there, what the GPU is, and TF32, which decides
how float32 convolutions and matrix products round on it."""

import contextlib
from typing import Dict, Iterator

import torch

from ..benchmark.machine import environment

__all__ = ["cuda_unavailable_reason", "describe", "tf32", "tf32_state"]


def cuda_unavailable_reason(device: str) -> str:
    """Why ``device`` (a CUDA device) cannot run here, or "" when it can."""
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        return f"CUDA is not available (torch {torch.__version__}, {built}; no GPU found)"
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return f"{device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return ""


def describe(device: str) -> Dict[str, object]:
    """The device and software: the benchmark's environment (name, threads, versions, commit),
    with the GPU's capability, memory, CUDA and cuDNN versions, and the TF32 settings."""
    info = dict(environment(device))
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        info.update(
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_default=tf32_state(),
        )
    return info


def _has_precision_api() -> bool:
    """torch 2.9 and later set TF32 by ``fp32_precision``; older ones by ``allow_tf32``."""
    return hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


def tf32_state() -> Dict[str, bool]:
    """Whether float32 convolutions (cuDNN) and matrix products (cuBLAS) may use TF32."""
    if _has_precision_api():
        return {
            "convolutions": torch.backends.cudnn.conv.fp32_precision == "tf32",
            "matmul": torch.backends.cuda.matmul.fp32_precision == "tf32",
        }
    return {"convolutions": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for float32 convolutions and matrix products inside; the settings before
    are restored after. (No effect on a CPU, and none on float64 or float16.)"""
    if _has_precision_api():
        conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        before = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision = matmul.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = before
    else:
        before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
