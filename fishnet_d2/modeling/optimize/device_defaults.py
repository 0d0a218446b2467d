"""The fast paths a FishNet takes by default on each kind of device, and where each choice was
measured: the one table that ``MODEL.FISHNET.FOLD_FROZEN_BN`` and ``CHANNELS_LAST`` read when
left unset (None, their default), for the device the model runs on (``MODEL.DEVICE``).

A path that helps on one kind of device may hurt on another: channels-last convolutions and
FrozenBN folded into them are measured on CPUs (docs/performance.md); on CUDA they are the CPU's
choices until ``tools/gpu_check.py`` measures them there (its benchmark rows with each path on and
off). Changing a choice is a change of this table, which the builder and the docs follow.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch

from ..errors import InvalidValue

__all__ = ["DeviceDefaults", "DEVICE_DEFAULTS", "device_defaults", "PATHS_BY_DEVICE"]

# The keyword arguments of build_fishnet that None leaves to the device.
PATHS_BY_DEVICE = ("fold_frozen_bn", "channels_last")


@dataclass(frozen=True)
class DeviceDefaults:
    """The default of each path that depends on the device, and where it was measured."""

    fold_frozen_bn: bool
    channels_last: bool
    # Where these choices were measured (docs/performance.md); None: not on this kind of device,
    # they are another device's choices until measured here.
    measured_on: Optional[str]


# The CPU's choices: FishNet-150 "plain" (NCHW, FrozenBN neither fused nor folded) against the
# default, 1.21-1.31x the backbone step's time on an Intel Xeon and an AMD EPYC.
_CPU = DeviceDefaults(fold_frozen_bn=True, channels_last=True, measured_on="CPU (Intel Xeon, AMD EPYC)")

DEVICE_DEFAULTS: Dict[str, DeviceDefaults] = {
    "cpu": _CPU,
    # Not measured on a GPU yet: the CPU's choices (cuDNN runs channels-last convolutions too).
    "cuda": DeviceDefaults(fold_frozen_bn=True, channels_last=True, measured_on=None),
}


def device_defaults(device: Union[str, torch.device]) -> DeviceDefaults:
    """The defaults for ``device`` ("cpu", "cuda", "cuda:1", a ``torch.device``): its type's
    record of :data:`DEVICE_DEFAULTS`; a type without one (e.g. "mps") gets the CPU's, the only
    measured ones, with ``measured_on`` None."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InvalidValue("device", device, "allowed a torch device: 'cpu', 'cuda', 'cuda:N', ...") from None
    if kind in DEVICE_DEFAULTS:
        return DEVICE_DEFAULTS[kind]
    return DeviceDefaults(_CPU.fold_frozen_bn, _CPU.channels_last, measured_on=None)
