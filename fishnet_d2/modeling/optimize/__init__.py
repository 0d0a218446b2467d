"""The ways to run a built FishNet faster or in less memory, each a substitution of the network's
modules, in a module of its own: FrozenBN folded into the convolutions (:mod:`.folding`), activation
checkpointing (:mod:`.checkpointing`), memory-efficient training (:mod:`.memory`), channels-last
(:mod:`.channels_last`), ``torch.compile`` (:mod:`.compile`). :func:`optimize_fishnet` applies
the chosen ones, in the order they build on each other; the config's builder calls it with
``MODEL.FISHNET``'s keys, LazyConfig files through :func:`fishnet_d2.modeling.build_fishnet`."""

from ..errors import InvalidValue
from ..fishnet import FishNet
from .channels_last import convert_to_channels_last
from .checkpointing import CHECKPOINT_CHOICES, Checkpointing, checkpoint_stages
from .compile import compile_in_place
from .folding import fold_frozen_batchnorm
from .memory import train_memory_efficiently

__all__ = ["optimize_fishnet", "CHECKPOINT_CHOICES"]


def optimize_fishnet(
    fishnet: FishNet,
    *,
    fold_frozen_bn: bool = True,
    channels_last: bool = True,
    activation_checkpointing: Checkpointing = None,
    memory_efficient: bool = False,
    compile_backend: str = "",
) -> FishNet:
    """Substitute ``fishnet``'s modules for the chosen speed and memory paths, in place, and
    return it. Each computes what the network computes (the same outputs; gradients equal up to
    rounding), and keeps the state_dict.

    Args:
        fold_frozen_bn: compute FrozenBN in fewer passes: folded into the convolution before it,
            else one fused multiply-add (:func:`~.folding.fold_frozen_batchnorm`). Norms frozen
            later (``fishnet.freeze``) are computed as Detectron2's.
        channels_last: compute in the channels-last memory format (NHWC), which oneDNN's and
            cuDNN's convolutions run fastest on; the features keep it
            (:func:`~.channels_last.convert_to_channels_last`).
        activation_checkpointing: in training, recompute these stages' activations in the
            backward pass instead of keeping them (less memory, more time): ``True`` or "all"
            every stage, ``False``, ``None`` or "none" none, "stride4", "tail", "body" or "head"
            (:data:`CHECKPOINT_CHOICES`), a stage name ("stem", "tail3", ..., "bridge", "body4",
            ..., "head3", ...), or a list of names and choices (:mod:`.checkpointing`).
        memory_efficient: in training, keep less for the backward pass, recomputing elementwise
            operations and, in runs of blocks that recover their inputs from their outputs, one
            1x1 convolution per block (:mod:`.memory`); with ``fold_frozen_bn`` and FrozenBN norms
            (else only its max-pools apply). Adds to ``activation_checkpointing``.
        compile_backend: "" runs eagerly; a ``torch.compile`` backend ("inductor") compiles the
            whole FishNet when it first runs (:func:`~.compile.compile_in_place`).

    Activation checkpointing and memory-efficient training change only training; a model with
    either cannot be scripted (TorchScript), and is traced and compiled as without them.
    """
    for name, value in (
        ("fold_frozen_bn", fold_frozen_bn),
        ("channels_last", channels_last),
        ("memory_efficient", memory_efficient),
    ):
        if not isinstance(value, bool):
            raise InvalidValue(name, value, "allowed True or False")
    if fold_frozen_bn:
        fold_frozen_batchnorm(fishnet)
    checkpointed = checkpoint_stages(fishnet, activation_checkpointing)
    if memory_efficient:
        train_memory_efficiently(fishnet, skip=checkpointed)
    if channels_last:
        convert_to_channels_last(fishnet)
    return compile_in_place(fishnet, compile_backend)
