"""``torch.compile`` of a built model (``MODEL.FISHNET.COMPILE``)."""

import torch
from torch import nn

from ..errors import InvalidValue

__all__ = ["compile_in_place"]


def compile_in_place(model: nn.Module, backend: str) -> nn.Module:
    """``model`` compiled with ``torch.compile``'s ``backend`` when it first runs, and again for a
    new mode (training or not) or input size until its sizes are compiled as dynamic; "" leaves it
    eager. In place (``nn.Module.compile``, unlike ``torch.compile(model)``, which would wrap it in
    a module of another type): the module keeps its type, attributes and state_dict."""
    if backend == "":
        return model
    allowed = torch.compiler.list_backends(exclude_tags=())
    if backend not in allowed:
        raise InvalidValue("compile_backend", backend, f"allowed '' (eager) or a torch.compile backend of {allowed}")
    model.compile(backend=backend)
    return model
