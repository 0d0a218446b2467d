"""The channels-last memory format (``MODEL.FISHNET.CHANNELS_LAST``)."""

import torch
from torch import nn

__all__ = ["convert_to_channels_last"]


def convert_to_channels_last(model: nn.Module) -> nn.Module:
    """``model``'s weights in the channels-last memory format (NHWC), in place; ``model`` is
    returned. oneDNN's and cuDNN's convolutions run fastest on it, and a convolution with a
    channels-last weight computes in it whatever its input's format (the first one converts the
    image), so every map after it is channels-last: the features too (their shapes are the same;
    what reads them, e.g. an FPN, runs in that format). Without it, a convolution whose input is
    channels-last and its weight not converts the weight at every call, forward and backward. The
    values, and so the state_dict, are the same; loading copies into this format."""
    return model.to(memory_format=torch.channels_last)
