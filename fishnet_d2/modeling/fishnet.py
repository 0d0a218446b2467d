"""The FishNet backbone (Sun et al., "FishNet: A Versatile Backbone for Image, Region, and Pixel
Level Prediction", NeurIPS 2018), exact to the official ImageNet model."""

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import nn

from .arch import FishNetArch, feature_name
from .blocks import Norm, ScoreUnit
from .errors import InvalidValue
from .stages import Bridge, DownRefinementStage, FishStage, FishStem, TailStage, UpRefinementStage

__all__ = ["FishNet"]


class FishNet(Backbone):
    """FishNet: a tail (down to the lowest resolution), a bridge, a body (UR-blocks, back up to
    stride 4) and a head (DR-blocks, down again), after a stem.

    Output features, named after the part and ``log2`` of their stride (official widths):

    ========  ======  ========  =====================================================
    name      stride  channels  what
    ========  ======  ========  =====================================================
    stem      4       64        the stem
    tail3-5   8-32    128-512   tail stages
    bridge    32      512       the bridge (SE attention)
    body4-2   16-4    768-320   body stages, after concatenation with the tail
    head2     4       320       the head's refinement of body2, before its first down-sampling
    head3-5   8-32    832-2112  head stages, after concatenation with the body
    linear    --      classes   logits (only with ``num_classes > 0``)
    ========  ======  ========  =====================================================

    With ``n`` stages per part the levels run 2 .. 2+n (the table is ``n = 3``).

    ``arch`` also selects the paper's other networks: FishNeXt's grouped blocks (``group_width``),
    and the down-sampling and dilation of its ablation (``downsample``, ``dilated_parts``).

    This is the network as the paper writes it. The ways to run it faster or in less memory
    (FrozenBN folded into the convolutions, channels-last, activation checkpointing,
    memory-efficient training, ``torch.compile``) substitute its modules once it is built:
    :func:`fishnet_d2.modeling.optimize.optimize_fishnet`, which :func:`~fishnet_d2.modeling.build_fishnet`
    and the config's builder call.
    """

    def __init__(
        self,
        arch: FishNetArch,
        *,
        in_channels: int = 3,
        norm: Norm = "BN",
        out_features: Optional[Sequence[str]] = None,
        num_classes: int = 0,
        freeze_at: int = 0,
        freeze_stem_conv1: bool = False,
    ):
        """
        Args:
            arch: widths and depths, e.g. ``FISHNET_VARIANTS[150]``.
            in_channels: channels of the input image.
            norm: a normalization accepted by ``detectron2.layers.get_norm``.
            out_features: names of the features to return (see the class docstring). Default:
                the head's features, and ``"linear"`` when ``num_classes > 0``.
            num_classes: 0 for a backbone only; otherwise the official classifier is added and
                its logits are the output ``"linear"``.
            freeze_at: number of stages to freeze, in the order they run (see :meth:`freeze`).
            freeze_stem_conv1: freeze the stem's first conv (and its norm), the only convolution
                that runs at full input resolution, as the paper does for COCO.
        """
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise InvalidValue("in_channels", in_channels, "must be a positive integer")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidValue("num_classes", num_classes, "allowed 0 (no classifier) or > 0")
        self.arch = arch
        self.in_channels = in_channels
        self.num_classes = num_classes
        self._out_feature_strides: Dict[str, int] = {}
        self._out_feature_channels: Dict[str, int] = {}
        try:
            self._build_stages(arch, norm)
        except InvalidValue as e:
            if e.name != "group_width":
                raise
            # Each block checks its own group width, the arch's at the block's resolution
            # (FishNetArch.group_width_at); said here in terms of the arch's.
            raise InvalidValue(
                "group_width",
                arch.group_width,
                f"gives groups of {e.value} channels to some residual blocks (groups double with each "
                f"halving of the resolution), and a block's group width {e.allowed}; allowed: 0 (no "
                "grouping) or a width whose groups fit every block",
            ) from None
        # Inputs must reach the bridge's (lowest) resolution without remainders.
        self._size_divisibility = 2**arch.bridge_level

        if num_classes > 0:
            self.classifier = ScoreUnit(
                arch.head_out_channels[-1], num_classes, global_pool=True, norm=norm
            )
            self._out_feature_channels["linear"] = num_classes
            self._out_feature_strides["linear"] = 2**arch.bridge_level
        else:
            self.classifier = None

        if out_features is None:
            out_features = [self._head_refined_name, *(stage.name for stage in self.head)]
            if num_classes > 0:
                out_features.append("linear")
        self._out_features = self._check_out_features(out_features)
        self.freeze(freeze_at)
        if freeze_stem_conv1:
            self.stem.conv1.freeze()

    def _build_stages(self, arch: FishNetArch, norm: Norm) -> None:
        """The stem, tail, bridge, body and head, each named and placed by ``arch``'s levels; records
        each output feature's shape."""
        self.stem = FishStem(
            self.in_channels,
            arch.stem_channels,
            name=feature_name("stem", arch.stem_level),
            level=arch.stem_level,
            norm=norm,
        )
        self._record(self.stem.name, self.stem.level, arch.stem_channels)

        tail: List[TailStage] = []
        channels = arch.stem_channels
        for i, level in enumerate(arch.tail_levels):
            stage = TailStage(
                channels,
                arch.tail_channels[i],
                arch.tail_blocks[i],
                name=feature_name("tail", level),
                level=level,
                group_width=arch.tail_group_widths[i],
                downsample=arch.downsample,
                norm=norm,
            )
            self._record(stage.name, stage.level, stage.out_channels)
            channels = stage.out_channels
            tail.append(stage)
        self.tail = nn.ModuleList(tail)

        self.bridge = Bridge(
            channels,
            arch.bridge_blocks,
            name=feature_name("bridge", arch.bridge_level),
            level=arch.bridge_level,
            group_width=arch.bridge_group_width,
            norm=norm,
        )
        self._record(self.bridge.name, self.bridge.level, channels)

        body: List[UpRefinementStage] = []
        for i, level in enumerate(arch.body_levels):
            stage = UpRefinementStage(
                arch.body_in_channels[i],
                arch.body_channels[i],
                arch.body_lateral_channels[i],
                num_blocks=arch.body_blocks[i],
                num_transfer_blocks=arch.body_transfer_blocks[i],
                dilation=arch.body_refine_dilations[i],
                name=feature_name("body", level),
                level=level,
                group_width=arch.body_group_widths[i],
                transfer_group_width=arch.body_transfer_group_widths[i],
                norm=norm,
            )
            self._record(stage.name, stage.level, stage.out_channels)
            body.append(stage)
        self.body = nn.ModuleList(body)

        head: List[DownRefinementStage] = []
        for i, level in enumerate(arch.head_levels):
            stage = DownRefinementStage(
                arch.head_in_channels[i],
                arch.head_channels[i],
                arch.head_lateral_channels[i],
                num_blocks=arch.head_blocks[i],
                num_transfer_blocks=arch.head_transfer_blocks[i],
                name=feature_name("head", level),
                level=level,
                dilation=arch.head_refine_dilations[i],
                group_width=arch.head_group_widths[i],
                transfer_group_width=arch.head_transfer_group_widths[i],
                downsample=arch.downsample,
                norm=norm,
            )
            head.append(stage)
        self.head = nn.ModuleList(head)
        # The first DR-block refines the last body stage's output before down-sampling: the head's
        # feature at that level (stride 4; the paper attaches FPN to the head, at strides 4 to 32).
        refined_level = arch.body_levels[-1]
        self._head_refined_name = feature_name("head", refined_level)
        self._record(self._head_refined_name, refined_level, head[0].refined_channels)
        for stage in head:
            self._record(stage.name, stage.level, stage.out_channels)

    def _record(self, name: str, level: int, channels: int) -> None:
        """Record an output feature's ShapeSpec as its stage is built."""
        self._out_feature_strides[name] = 2**level
        self._out_feature_channels[name] = channels

    def _check_out_features(self, out_features: Sequence[str]) -> List[str]:
        out_features = list(out_features)
        allowed = list(self._out_feature_channels)
        unknown = [f for f in out_features if f not in allowed]
        if unknown or not out_features:
            raise InvalidValue(
                "out_features",
                out_features,
                f"{'unknown ' + str(unknown) if unknown else 'empty'}; allowed: {allowed}"
                + ("" if self.num_classes > 0 else " ('linear' needs {num_classes} > 0)"),
            )
        if self.num_classes > 0 and "linear" not in out_features:
            raise InvalidValue(
                "out_features",
                out_features,
                f"{{num_classes}}={self.num_classes} adds a classifier, so 'linear' must be among "
                "them (else it gets no gradient)",
            )
        return out_features

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def stages(self) -> List[FishStage]:
        """All stages in the order they run; ``freeze_at=k`` freezes the first ``k``."""
        return [self.stem, *self.tail, self.bridge, *self.body, *self.head]

    def freeze(self, freeze_at: int = 0) -> "FishNet":
        """Freeze the first ``freeze_at`` stages (Detectron2 semantics: parameters get no
        gradient and BatchNorm becomes FrozenBatchNorm2d). With three stages per part:

        0: nothing; 1: stem; 2-4: + tail3, tail4, tail5; 5: + bridge;
        6-8: + body4, body3, body2; 9-11: + head stages (head2/head3, head4, head5).
        The classifier is never frozen by ``freeze_at``.
        """
        stages = self.stages()
        if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or not 0 <= freeze_at <= len(stages):
            raise InvalidValue(
                "freeze_at",
                freeze_at,
                f"allowed 0 to {len(stages)} (0 freezes nothing, k the first k stages: stem, tail, "
                "bridge, body, head)",
            )
        for stage in stages[:freeze_at]:
            stage.freeze()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images, ``(N, C, H, W)``; ``H`` and ``W`` multiples of ``size_divisibility``.
        Returns:
            dict of the requested features.
        """
        self._check_input(x)
        x = self.stem(x)
        features: Dict[str, torch.Tensor] = {self.stem.name: x}
        # The transfer blocks of a body stage read the tail (or stem) feature at the stage's
        # output resolution; those of a head stage read the body (or bridge) feature.
        tail_by_level: Dict[int, torch.Tensor] = {self.stem.level: x}
        for stage in self.tail:
            x = stage(x)
            features[stage.name] = x
            tail_by_level[stage.level] = x
        x = self.bridge(x)
        features[self.bridge.name] = x
        body_by_level: Dict[int, torch.Tensor] = {self.bridge.level: x}
        for stage in self.body:
            x = stage(x, tail_by_level[stage.level])
            features[stage.name] = x
            body_by_level[stage.level] = x
        for i, stage in enumerate(self.head):
            refined, x = stage(x, body_by_level[stage.level])
            if i == 0:
                features[self._head_refined_name] = refined
            features[stage.name] = x
        if self.classifier is not None:
            features["linear"] = self.classifier(x).flatten(1)
        return {name: features[name] for name in self._out_features}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"FishNet takes images of shape (N, {self.in_channels}, H, W); got {list(x.shape)}"
            )
        d = self.size_divisibility
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            # TorchScript: the sizes are numbers (scripting) or recorded as constants (tracing).
            if x.shape[-2] % d != 0 or x.shape[-1] % d != 0:
                raise ValueError(_divisibility_message(x.shape[-2], x.shape[-1], d))
        else:
            _check_divisible(x.shape[-2], x.shape[-1], d)


def _divisibility_message(height: int, width: int, divisibility: int) -> str:
    return (
        f"FishNet needs input height and width that are multiples of {divisibility} "
        f"(size_divisibility); got {height}x{width}. Pad the images "
        f"(Detectron2's ImageList.from_tensors(..., size_divisibility={divisibility}) does)."
    )


@torch.jit.unused
def _check_divisible(height: int, width: int, divisibility: int) -> None:
    """ValueError unless ``height`` and ``width`` are multiples of ``divisibility``. Under
    torch.export they may be sizes the data decides (Detectron2 computes the padding from
    tensors), on which an ``if`` cannot branch: ``torch._check_value`` keeps the check in the
    exported program instead. One check per side: ``and`` would branch on the first."""
    torch._check_value(height % divisibility == 0, lambda: _divisibility_message(height, width, divisibility))
    torch._check_value(width % divisibility == 0, lambda: _divisibility_message(height, width, divisibility))
