"""FishNet's building blocks: the pre-activation bottleneck, its shortcuts, and the small units.

Every module here takes explicit arguments; none reads a config.
"""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, FrozenBatchNorm2d, get_norm
from torch import nn

from .errors import InvalidValue
from .memory import lean_conv, saves_memory
from .reversible import Conv2Args, FoldedBlock

__all__ = [
    "FusedFrozenBatchNorm2d",
    "make_norm",
    "FishNetBlockBase",
    "ChannelSumReduction",
    "PreActProjection",
    "PreActBottleneck",
    "GroupedPreActBottleneck",
    "ConvNormReLU",
    "ScoreUnit",
    "SqueezeExcitation",
    "conv_init_",
    "relu_may_overwrite",
    "folds_into_conv",
    "choose_folding",
]

Norm = Union[str, type, None]


class FusedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Detectron2's FrozenBatchNorm2d (same buffers, same state_dict), whose training-time
    affine ``x * scale + bias`` is one fused multiply-add: one pass over ``x`` instead of two.

    FishNet's pre-activation blocks normalize every block input at full width, so this affine
    is a good part of their elementwise work (Detectron2's ResNets normalize conv outputs).
    """

    def scale_shift(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)``, the affine this norm is: ``norm(y) = y * scale + shift`` per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def fold_into(self, conv_weight: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the one convolution that computes this norm of a bias-free
        convolution with ``conv_weight`` (:func:`folds_into_conv`): ``conv_weight * scale`` per
        output channel (keeping its memory format), and ``shift`` in ``dtype``. The caller runs
        them through ``F.conv2d`` with that convolution's stride, padding, dilation and groups."""
        scale, shift = self.scale_shift()
        return conv_weight * scale.reshape(-1, 1, 1, 1).to(conv_weight.dtype), shift.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # as Detectron2 does, an affine, not F.batch_norm (which keeps x)
            scale, bias = self.scale_shift()
            scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
            return torch.addcmul(bias.reshape(1, -1, 1, 1).to(x.dtype), x, scale)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )


NORMS = "FrozenBN, BN, SyncBN, nnSyncBN, naiveSyncBN, GN, '' (none), or what your detectron2's get_norm accepts"


def make_norm(norm: Norm, channels: int) -> nn.Module:
    """``detectron2.layers.get_norm``, with ``nn.Identity`` where it returns no module (norm="").

    "FrozenBN" is :class:`FusedFrozenBatchNorm2d`, a faster Detectron2 FrozenBatchNorm2d.
    "GN" is Detectron2's GroupNorm with 32 groups where the width is a multiple of 32; FishNet
    also normalizes widths that are not (16, 80, 208, 400 in the official variants), which get
    ``gcd(32, C)`` groups instead of an error.
    """
    if norm == "FrozenBN":
        return FusedFrozenBatchNorm2d(channels)
    if norm == "GN" and channels % 32:
        return nn.GroupNorm(math.gcd(32, channels), channels)
    try:
        module = get_norm(norm, channels)
    except (KeyError, ValueError, TypeError):
        raise InvalidValue("norm", norm, f"allowed {NORMS}") from None
    return nn.Identity() if module is None else module


def folds_into_conv(norm: nn.Module) -> bool:
    """Whether ``norm``, directly after a convolution, is folded into it: a FrozenBN
    (:class:`FusedFrozenBatchNorm2d`) is a fixed per-channel affine ``y * scale + shift``, so
    ``norm(conv(x, w)) = conv(x, w * scale, bias=shift)``, exactly, in training too (the folded
    weight is recomputed from the trainable ``w`` at every call, and autograd takes the
    gradient through the product). The convolution then writes the normalized map itself: one
    elementwise pass over the activations less forward, and one less backward.

    BatchNorm in training normalizes by batch statistics, GroupNorm by each sample's: neither is
    an affine of the conv's output that the conv could compute.
    """
    return isinstance(norm, FusedFrozenBatchNorm2d)


class FishNetBlockBase(CNNBlockBase):
    """Detectron2's ``CNNBlockBase`` whose :meth:`freeze` installs :class:`FusedFrozenBatchNorm2d`,
    so that a frozen stage runs the same (faster) FrozenBN as ``norm="FrozenBN"``, and folds the
    norms that now can into their convolutions (:func:`folds_into_conv`)."""

    def freeze(self) -> "FishNetBlockBase":
        """No gradients for the parameters; every BatchNorm becomes a FusedFrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad = False
        FusedFrozenBatchNorm2d.convert_frozen_batchnorm(self)
        choose_folding(self)
        return self


def choose_folding(module: nn.Module) -> None:
    """(Re)decide, for ``module`` and what it contains, which norms are folded into the conv
    before them, from the norms they now have: when a block is built, and after :meth:`freeze`
    replaced its norms. Call it after replacing norms by hand, too."""
    for m in module.modules():
        if isinstance(m, (PreActBottleneck, ConvNormReLU, ScoreUnit)):
            m.decide_folding()


def relu_may_overwrite(norm: nn.Module) -> bool:
    """Whether a pre-activation's ReLU may overwrite ``norm(x)`` in place (one memory pass and
    one allocation less). Detectron2's norms return a new tensor that nothing else holds: their
    backward keeps their input, not their output. Without a norm (``nn.Identity``) it is ``x``
    itself, which the shortcut still reads.
    """
    return not isinstance(norm, nn.Identity)


def conv_init_(conv: nn.Conv2d) -> None:
    """The official initialisation: weights ~ N(0, sqrt(2 / (k * k * C_out))).

    That is He's "fan_out" normal init. Biases keep PyTorch's default, as in the official model.
    """
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class ChannelSumReduction(nn.Module):
    """The channel-wise reduction ``r`` of the UR-block (paper, eq. 8); it has no weights.

    Sums each group of ``k`` adjacent input channels into one output channel:
    ``x.view(n, c // k, k, h, w).sum(2)``.
    """

    def __init__(self, k: int):
        super().__init__()
        if k < 2:
            raise ValueError(f"ChannelSumReduction(k={k}): k must be >= 2 (k=1 is the identity)")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, c // self.k, self.k, h, w).sum(2)


class PreActProjection(nn.Module):
    """A pre-activated 1x1 projection shortcut, ``norm-ReLU-conv1x1`` (the paper's "I-conv").

    With ``stride=2`` it is the shortcut of a block that down-samples (``downsample="conv"``, the
    "1x1 convolution on the skip connection" of the paper's Table 2 footnote).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "BN"):
        super().__init__()
        self.norm = make_norm(norm, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        conv_init_(self.conv)
        self.relu_inplace = relu_may_overwrite(self.norm)
        # Training keeps x instead of the activation where the norm is a FrozenBN (set by
        # FishNet's memory_efficient: memory.lean_conv).
        self.recompute_activation = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.recompute_activation and isinstance(self.norm, FusedFrozenBatchNorm2d) and saves_memory():
                return lean_conv(x, self.conv, activation=self.norm.scale_shift())
        return self.conv(F.relu(self.norm(x), inplace=self.relu_inplace))


class PreActBottleneck(FishNetBlockBase):
    """The pre-activation bottleneck residual unit, ``x_{l+1} = x_l + F(x_l)`` (paper, eq. 1):
    FishNet's building block, "the Residual block with identity mapping" (sec. 4.1).

    ``F`` is ``norm-ReLU-conv1x1(C_in -> C/4) - norm-ReLU-conv3x3(C/4, stride, dilation) -
    norm-ReLU-conv1x1(C/4 -> C)``. The shortcut is the identity when ``C_in == C`` and
    ``stride == 1``; otherwise it is passed in: a :class:`PreActProjection` (tail and bridge;
    strided in a block that down-samples) or a :class:`ChannelSumReduction` (first block of a
    UR-block, where it is the ``r`` of eq. 6).

    ``stride=2`` (``downsample="conv"``, paper Table 2): the 3x3 conv carries the stride, as in
    ResNeXt's and pre-activation ResNet's (fb.resnet.torch) blocks, rather than the first 1x1
    conv, which would skip three quarters of its input.
    """

    # Whether norm2 / norm3 are folded into conv1 / conv2 (folds_into_conv): decided from the
    # norms when the block is built or frozen; constants to TorchScript, which compiles only the
    # branch taken.
    fold_norm2: torch.jit.Final[bool]
    fold_norm3: torch.jit.Final[bool]
    # Every norm a FrozenBN: norm1 an affine, norm2 and norm3 folded (the memory-efficient paths'
    # condition).
    frozen_norms: torch.jit.Final[bool]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        shortcut: nn.Module,
        stride: int = 1,
        dilation: int = 1,
        bottleneck_channels: Optional[int] = None,
        groups: int = 1,
        norm: Norm = "BN",
    ):
        """``bottleneck_channels`` (default ``out_channels // 4``, FishNet's) and ``groups`` (of
        the 3x3 conv) are set by :class:`GroupedPreActBottleneck`, FishNeXt's block."""
        if bottleneck_channels is None:
            bottleneck_channels = out_channels // 4
        super().__init__(in_channels, out_channels, stride=stride)
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False)
        self.norm2 = make_norm(norm, bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.norm3 = make_norm(norm, bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.shortcut = shortcut
        for conv in (self.conv1, self.conv2, self.conv3):
            conv_init_(conv)
        self.relu1_inplace = relu_may_overwrite(self.norm1)
        # Training keeps less where the norms are FrozenBN (set by FishNet's memory_efficient:
        # forward_keeping_less): the unfolded weights, and with recompute_activation x instead
        # of norm1's activation.
        self.keep_less = False
        self.recompute_activation = False
        self.decide_folding()

    def decide_folding(self) -> None:
        """Fold norm2 into conv1 and norm3 into conv2 where they are FrozenBN (folds_into_conv)."""
        self.fold_norm2 = folds_into_conv(self.norm2)
        self.fold_norm3 = folds_into_conv(self.norm3)
        self.frozen_norms = self.fold_norm2 and self.fold_norm3 and isinstance(self.norm1, FusedFrozenBatchNorm2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.keep_less and self.frozen_norms and saves_memory():
                return self.forward_keeping_less(x)
        out = F.relu(self.norm1(x), inplace=self.relu1_inplace)
        # From here on `out` is a convolution's output (or its norm's), which their backward does
        # not keep: overwriting it in place is safe.
        if self.fold_norm2:
            c1 = self.conv1
            weight, bias = self.norm2.fold_into(c1.weight, out.dtype)
            out = F.conv2d(out, weight, bias, c1.stride, c1.padding, c1.dilation, c1.groups)
        else:
            out = self.norm2(self.conv1(out))
        out = F.relu_(out)
        if self.fold_norm3:
            c2 = self.conv2
            weight, bias = self.norm3.fold_into(c2.weight, out.dtype)
            out = F.conv2d(out, weight, bias, c2.stride, c2.padding, c2.dilation, c2.groups)
        else:
            out = self.norm3(self.conv2(out))
        out = self.conv3(F.relu_(out))
        out += self.shortcut(x)
        return out

    @torch.jit.unused
    def forward_keeping_less(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in training with FrozenBN norms, keeping less for the backward pass
        (FishNet's memory_efficient; :func:`~fishnet_d2.modeling.memory.lean_conv`): conv1 and
        conv2 keep their weights before norm2 and norm3 are folded in, and with
        ``recompute_activation`` conv1 keeps x instead of norm1's activation. The same values, op
        for op."""
        if self.recompute_activation:
            out = lean_conv(x, self.conv1, activation=self.norm1.scale_shift(), folded=self.norm2.scale_shift())
        else:
            out = lean_conv(F.relu(self.norm1(x), inplace=True), self.conv1, folded=self.norm2.scale_shift())
        out = lean_conv(F.relu_(out), self.conv2, folded=self.norm3.scale_shift())
        out = self.conv3(F.relu_(out))
        out += self.shortcut(x)
        return out

    def is_reversible(self) -> bool:
        """Whether the block's input can be recovered from its output, ``x + F(x)``: an identity
        shortcut, stride 1 (:mod:`~fishnet_d2.modeling.reversible`; with FrozenBN norms,
        ``frozen_norms``)."""
        return isinstance(self.shortcut, nn.Identity) and self.stride == 1

    @torch.jit.unused
    def folded_tensors(self) -> Tuple[FoldedBlock, Conv2Args]:
        """The block's weights and FrozenBN affines, and conv2's arguments, for
        :func:`~fishnet_d2.modeling.reversible.recovering_blocks`."""
        c2 = self.conv2
        tensors = FoldedBlock(
            self.conv1.weight,
            c2.weight,
            self.conv3.weight,
            *self.norm1.scale_shift(),
            *self.norm2.scale_shift(),
            *self.norm3.scale_shift(),
        )
        return tensors, Conv2Args(tuple(c2.padding), tuple(c2.dilation), c2.groups)


class GroupedPreActBottleneck(PreActBottleneck):
    """FishNeXt's building block, "the Residual block with identity mapping and grouping [29]"
    (paper, sec. 4.1 and 4.2): :class:`PreActBottleneck` with ResNeXt's grouped bottleneck.

    ``F`` is ``norm-ReLU-conv1x1(C_in -> C/2) - norm-ReLU-conv3x3(C/2, groups of group_width) -
    norm-ReLU-conv1x1(C/2 -> C)``. The paper gives only the group width; the bottleneck width is
    ResNeXt's template (ResNeXt-50 32x4d: 128 bottleneck channels for 256 outputs, twice a ResNet
    bottleneck's C/4), which grouping pays for: FishNeXt-150 (4d) then has about FishNet-150's
    parameters, as the paper's Table 1 (26.2M vs 26.4M). The shortcut is :class:`PreActBottleneck`'s,
    unchanged: a channel-wise summation ``r`` has no weights to group.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        group_width: int,
        shortcut: nn.Module,
        stride: int = 1,
        dilation: int = 1,
        norm: Norm = "BN",
    ):
        bottleneck_channels = out_channels // 2
        if group_width < 1 or bottleneck_channels % group_width:
            raise InvalidValue(
                "group_width",
                group_width,
                f"must divide the block's {bottleneck_channels} bottleneck channels ({out_channels} out_channels / 2)",
            )
        super().__init__(
            in_channels,
            out_channels,
            shortcut=shortcut,
            stride=stride,
            dilation=dilation,
            bottleneck_channels=bottleneck_channels,
            groups=bottleneck_channels // group_width,
            norm=norm,
        )
        self.group_width = group_width


class ConvNormReLU(FishNetBlockBase):
    """``conv3x3 - norm - ReLU``: one of the stem's three units (a FrozenBN folded into the conv:
    :func:`folds_into_conv`)."""

    fold_norm: torch.jit.Final[bool]

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: Norm = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm = make_norm(norm, out_channels)
        conv_init_(self.conv)
        self.decide_folding()

    def decide_folding(self) -> None:
        self.fold_norm = folds_into_conv(self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.normalized(x))

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``norm(conv(x))``, before the ReLU."""
        if self.fold_norm:
            weight, bias = self.norm.fold_into(self.conv.weight, x.dtype)
            c = self.conv
            return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
        return self.norm(self.conv(x))


class ScoreUnit(nn.Module):
    """The official "score" unit: ``norm-ReLU-conv1x1(C -> C/2)-norm-ReLU``, then ``conv1x1(bias)``.

    The bridge uses it without pooling to produce ``s`` (``C -> 2C``); the classifier with a global
    average pool before the last conv (``C -> classes``). A FrozenBN ``norm2`` is folded into
    ``conv1`` (:func:`folds_into_conv`).
    """

    fold_norm2: torch.jit.Final[bool]

    def __init__(self, in_channels: int, out_channels: int, *, global_pool: bool, norm: Norm = "BN"):
        super().__init__()
        mid_channels = in_channels // 2
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.norm2 = make_norm(norm, mid_channels)
        self.global_pool = global_pool
        self.fc = nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=True)
        conv_init_(self.conv1)
        conv_init_(self.fc)
        self.decide_folding()

    def decide_folding(self) -> None:
        self.fold_norm2 = folds_into_conv(self.norm2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(x))
        if self.fold_norm2:
            c1 = self.conv1
            weight, bias = self.norm2.fold_into(c1.weight, x.dtype)
            x = F.conv2d(x, weight, bias, c1.stride, c1.padding, c1.dilation, c1.groups)
        else:
            x = self.norm2(self.conv1(x))
        x = F.relu(x)
        if self.global_pool:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x)


class SqueezeExcitation(nn.Module):
    """The bridge's SE unit: ``norm-ReLU-global pool-conv1x1(bias)-ReLU-conv1x1(bias)-sigmoid``.

    It maps ``in_channels`` to ``out_channels`` attention weights through ``out_channels // 16``
    channels (paper, sec. 3.2: "we apply a SE-block [11] here").
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Norm = "BN"):
        super().__init__()
        squeezed_channels = out_channels // 16
        self.norm = make_norm(norm, in_channels)
        self.squeeze = nn.Conv2d(in_channels, squeezed_channels, kernel_size=1, bias=True)
        self.excite = nn.Conv2d(squeezed_channels, out_channels, kernel_size=1, bias=True)
        conv_init_(self.squeeze)
        conv_init_(self.excite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(x))))
