"""How every optimization changes a built FishNet: it substitutes modules, keeping their weights."""

from typing import Type, TypeVar

from torch import nn

__all__ = ["substitute", "TrainingPath"]

M = TypeVar("M", bound=nn.Module)


def substitute(module: nn.Module, cls: Type[M]) -> M:
    """``module``, in place, made an instance of ``cls``: a subclass of the network's class that
    computes the same thing another way (its own ``forward``) and adds no parameter, buffer or
    child. The module keeps its children, parameters, buffers and attributes, so the model's
    state_dict, its parameters' identity (an optimizer made before still holds them) and its
    module names do not change. ``torch.nn.utils.parametrize`` substitutes a module's class the
    same way. The substituted class is ``cls``'s last base (mixins come first)."""
    base = cls.__bases__[-1]
    if not isinstance(module, base):
        raise TypeError(f"{cls.__name__} substitutes a {base.__name__}; got a {type(module).__name__}")
    module.__class__ = cls
    return module  # type: ignore[return-value]


class TrainingPath:
    """Mixed into a substitution that changes only how training runs (activation checkpointing,
    memory-efficient training), whose ``forward`` calls the substituted one through ``super()``,
    which TorchScript cannot compile: scripting such a model is refused with this message (torch
    calls ``__prepare_scriptable__`` on each module before compiling it)."""

    def __prepare_scriptable__(self) -> None:
        raise RuntimeError(
            f"{type(self).__name__}: a FishNet with training paths (activation checkpointing, "
            "memory-efficient training) cannot be scripted; build the model for TorchScript without "
            "MODEL.FISHNET.CHECKPOINT and MEMORY_EFFICIENT (they change nothing outside training), "
            "e.g. with fishnet_d2.modeling.inference_fishnet_config(cfg)"
        )
