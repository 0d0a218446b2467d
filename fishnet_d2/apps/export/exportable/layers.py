"""Detectron2's ``Conv2d.forward`` (``layers/wrappers.py``) in inference, and the mask head's layers
run with it.

Detectron2 v0.6's ``Conv2d`` asks ``x.numel() == 0`` before it convolves (for an assertion in
training), which ``torch.export`` cannot answer when the number of boxes is decided by the data
(main skips the question while compiling). Here the convolution, norm and activation are the
layer's own, without the question.
"""

import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import Tensor, nn

__all__ = ["conv2d_inference", "mask_head_layers"]


def conv2d_inference(layer: Conv2d, x: Tensor) -> Tensor:
    """``layer(x)`` in inference: its convolution, then its norm and activation when it has them."""
    x = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if layer.norm is not None:
        x = layer.norm(x)
    if layer.activation is not None:
        x = layer.activation(x)
    return x


def mask_head_layers(mask_head: nn.Module, x: Tensor) -> Tensor:
    """``MaskRCNNConvUpsampleHead.layers(x)``: its layers in order (the head is a sequence of them),
    Detectron2's ``Conv2d`` by :func:`conv2d_inference`."""
    for layer in mask_head.children():
        x = conv2d_inference(layer, x) if isinstance(layer, Conv2d) else layer(x)
    return x
