"""FishNet architectures as data: one typed record per architecture, the official variants, and
the one rule that turns a depth (or a custom description) into an architecture."""

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Dict, Tuple

from .errors import InvalidValue

__all__ = [
    "FishNetArch",
    "FISHNET_VARIANTS",
    "FISHNEXT_VARIANTS",
    "VARIANT_OPTIONS",
    "DOWNSAMPLINGS",
    "DILATED_PARTS",
    "fishnet_arch",
]

# How tail and head stages halve the resolution (paper, sec. 3.2 and 4.3, Table 2):
#   "max2": 2x2 max-pool, stride 2 (the paper's choice and the official model's),
#   "max3": 3x3 max-pool, stride 2, padding 1 (overlapping windows),
#   "avg2": 2x2 average pool, stride 2,
#   "conv": the last residual block of the stage carries the stride (its 3x3 conv has stride 2,
#           its shortcut is a strided 1x1 conv), in the tail and in the head (Table 2, footnote).
DOWNSAMPLINGS = ("max2", "max3", "avg2", "conv")
# Where the refining blocks are dilated (paper, sec. 4.3, "Dilated convolution"):
#   "body": the body's refining blocks M, by body_dilations (the official model),
#   "body+head": also the head's refining blocks, the body's rates mirrored (see head_refine_dilations),
#   "none": no dilation anywhere (body_dilations is then unused).
DILATED_PARTS = ("body", "body+head", "none")
# FishNetArch's fields that are not positive integers (FishNetArch._check_choices checks them).
_CHOICES = ("group_width", "downsample", "dilated_parts")


def _group_width_at(group_width: int, level: int) -> int:
    """FishNeXt's group width at stride ``2**level`` for ``group_width`` at stride 4 (0: none).

    The paper (sec. 4.2): "the number of channels in a group for each block (UR/DR block and
    transfer block) of the same stage should be the same. The width of a single group will be
    doubled once the stage index increase by 1". Its stage index ``s`` is the resolution (eq. 5-9
    concatenate tail, body and head features of the same ``s``), so the group width follows the
    resolution, as in ResNeXt (4d at stride 4, 8d at 8, 16d at 16, 32d at 32): the smallest group,
    at stride 4 (the stem's output, where the first blocks run), has ``group_width`` channels
    ("4d ... the minimum number of channels for a single group is 4"). The stem's convs are not
    residual blocks and stay ungrouped, as ResNeXt's stem.
    """
    return group_width * 2 ** (level - 2)


@dataclass(frozen=True)
class FishNetArch:
    """Widths and depths of a FishNet.

    A FishNet has ``n`` tail stages (strides 4->8->...), a bridge at the lowest resolution, ``n``
    body stages (UR-blocks, back up to stride 4) and ``n`` head stages (DR-blocks, down again).
    Every tuple below has one entry per stage, in the order the stages run. The bridge keeps the
    width of the last tail stage (the official model requires it: its score unit maps C -> C/2 -> 2C
    and its blocks 2C -> C, with C the width of the last tail stage).

    The official constructor's ``network_planes`` is
    ``[stem_channels, *tail_channels, tail_channels[-1], *body_channels, *head_channels]``
    and its ``num_res_blks`` is ``[*tail_blocks, bridge_blocks, *body_blocks, *head_blocks]``.
    """

    stem_channels: int = 64
    tail_channels: Tuple[int, ...] = (128, 256, 512)
    body_channels: Tuple[int, ...] = (512, 384, 256)
    head_channels: Tuple[int, ...] = (320, 832, 1600)
    tail_blocks: Tuple[int, ...] = (2, 2, 6)
    bridge_blocks: int = 2
    body_blocks: Tuple[int, ...] = (1, 1, 1)
    head_blocks: Tuple[int, ...] = (1, 2, 2)
    body_transfer_blocks: Tuple[int, ...] = (1, 1, 1)
    head_transfer_blocks: Tuple[int, ...] = (1, 1, 4)
    # The official model dilates the body's refining blocks 1, 2, 4 (paper, sec. 3.2 and 4.3:
    # "we adopt dilated convolution in the fish body"); transfer blocks and the head are not dilated.
    # dilated_parts says where dilation applies (body_refine_dilations, head_refine_dilations).
    body_dilations: Tuple[int, ...] = (1, 2, 4)
    # FishNeXt (paper, sec. 4.2 and Table 1): 0 is FishNet's plain bottleneck; g > 0 makes every
    # residual block ResNeXt's grouped bottleneck (blocks.GroupedPreActBottleneck), in groups of g
    # channels at stride 4 and twice as many with each halving of the resolution (_group_width_at).
    # FishNeXt-150 (4d): 4.
    group_width: int = 0
    # One of DOWNSAMPLINGS: how tail and head stages halve the resolution (paper, Table 2).
    downsample: str = "max2"
    # One of DILATED_PARTS: where the refining blocks are dilated (paper, sec. 4.3).
    dilated_parts: str = "body"

    def __post_init__(self) -> None:
        n = len(self.tail_channels)
        if n < 1:
            raise InvalidValue("tail_channels", self.tail_channels, "empty; a FishNet has at least one stage per part")
        for f in fields(self):
            if f.name in _CHOICES:
                continue
            value = getattr(self, f.name)
            if f.type is int:
                if not isinstance(value, int) or value < 1:
                    raise InvalidValue(f.name, value, "must be a positive integer")
            elif len(value) != n or not all(isinstance(v, int) and v >= 1 for v in value):
                raise InvalidValue(
                    f.name, value, f"must be {n} positive integers, one per stage ({{tail_channels}} has {n} stages)"
                )
        for name in ("stem_channels", "tail_channels", "body_channels", "head_channels"):
            widths = getattr(self, name)
            if min(widths if isinstance(widths, tuple) else (widths,)) < 4:
                raise InvalidValue(name, widths, "widths must be >= 4 (bottlenecks use width / 4)")
        if self.tail_channels[-1] < 16:
            raise InvalidValue(
                "tail_channels", self.tail_channels[-1], "must be >= 16 (the bridge's SE unit squeezes it by 16)", index=-1
            )
        for i, (c_in, c_out) in enumerate(zip(self.body_in_channels, self.body_channels)):
            if c_in % c_out:
                raise InvalidValue(
                    "body_channels",
                    c_out,
                    f"must divide the {c_in} channels entering body stage {i}, which the UR-block "
                    f"reduces by channel-wise summation (paper, eq. 8); allowed: divisors of {c_in}",
                    index=i,
                )
        self._check_choices()

    def _check_choices(self) -> None:
        """The FishNeXt and ablation fields: names from their lists, and a group width whose
        group at each stride divides the bottleneck of every block that runs there."""
        if self.downsample not in DOWNSAMPLINGS:
            raise InvalidValue("downsample", self.downsample, f"allowed {list(DOWNSAMPLINGS)}")
        if self.dilated_parts not in DILATED_PARTS:
            raise InvalidValue("dilated_parts", self.dilated_parts, f"allowed {list(DILATED_PARTS)}")
        g = self.group_width
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise InvalidValue(
                "group_width", g, "allowed 0 (FishNet: no grouping) or a positive integer (FishNeXt; the paper's 4d: 4)"
            )
        misfit = self._group_misfit(g)
        if misfit:
            fitting = [w for w in range(1, min(self.tail_channels) + 1) if not self._group_misfit(w)]
            raise InvalidValue(
                "group_width",
                g,
                f"{misfit}. Allowed: 0 (no grouping) or, for these widths, {fitting}",
            )

    def _group_misfit(self, group_width: int) -> str:
        """Why ``group_width`` does not fit the residual blocks' bottlenecks ("" where it does)."""
        if group_width == 0:
            return ""
        for part, widths, levels in self._residual_block_sites():
            for width, level in zip(widths, levels):
                bottleneck, group = width // 2, _group_width_at(group_width, level)
                if bottleneck % group:
                    return (
                        f"the {part} blocks of width {width} run at stride {2**level}, where groups have "
                        f"{{group_width}} * {2 ** (level - 2)} = {group} channels, which do not divide their "
                        f"{bottleneck} bottleneck channels (width / 2)"
                    )
        return ""

    def _residual_block_sites(self) -> Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]:
        """``(part, widths, levels)``: the output width of each stage's residual blocks and the
        level (log2 of the stride) at which they run."""
        return (
            ("tail", self.tail_channels, self._tail_levels),
            ("bridge", (self.tail_channels[-1],), (self._bridge_level,)),
            ("body", self.body_channels, self._body_refine_levels),
            ("body transfer", self.body_lateral_channels, self._body_transfer_levels),
            ("head", self.head_channels, self._head_refine_levels),
            ("head transfer", self.head_lateral_channels, self._head_transfer_levels),
        )

    # Levels (log2 of the stride) at which each stage's residual blocks run, i.e. their input's.
    # The tail's blocks run before its down-sampling (stride 4 for the first stage), the bridge's
    # at the lowest resolution; a body stage refines its input before up-sampling and transfers
    # the tail feature at its output resolution; a head stage refines its input before
    # down-sampling and transfers the body feature at its output resolution.

    @property
    def _tail_levels(self) -> Tuple[int, ...]:
        return tuple(range(2, 2 + self.num_stages))

    @property
    def _bridge_level(self) -> int:
        return 2 + self.num_stages

    @property
    def _body_refine_levels(self) -> Tuple[int, ...]:
        return tuple(range(2 + self.num_stages, 2, -1))

    @property
    def _body_transfer_levels(self) -> Tuple[int, ...]:
        return tuple(range(1 + self.num_stages, 1, -1))

    @property
    def _head_refine_levels(self) -> Tuple[int, ...]:
        return tuple(range(2, 2 + self.num_stages))

    @property
    def _head_transfer_levels(self) -> Tuple[int, ...]:
        return tuple(range(3, 3 + self.num_stages))

    # The group width of each stage's blocks (group_width_at their level); 0: not grouped.

    @property
    def tail_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self._tail_levels)

    @property
    def bridge_group_width(self) -> int:
        return self.group_width_at(self._bridge_level)

    @property
    def body_group_widths(self) -> Tuple[int, ...]:
        """Of each body stage's refining blocks M."""
        return tuple(self.group_width_at(level) for level in self._body_refine_levels)

    @property
    def body_transfer_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self._body_transfer_levels)

    @property
    def head_group_widths(self) -> Tuple[int, ...]:
        """Of each head stage's refining blocks M."""
        return tuple(self.group_width_at(level) for level in self._head_refine_levels)

    @property
    def head_transfer_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self._head_transfer_levels)

    def group_width_at(self, level: int) -> int:
        """Channels per group of the grouped 3x3 convs that run at stride ``2**level``; 0 for
        FishNet's ungrouped blocks (:func:`_group_width_at`)."""
        return _group_width_at(self.group_width, level)

    @property
    def body_refine_dilations(self) -> Tuple[int, ...]:
        """Dilation of each body stage's refining blocks M: ``body_dilations`` unless no part is
        dilated. Transfer blocks are never dilated (as in the official model)."""
        if self.dilated_parts == "none":
            return (1,) * self.num_stages
        return self.body_dilations

    @property
    def head_refine_dilations(self) -> Tuple[int, ...]:
        """Dilation of each head stage's refining blocks M: 1 unless the head is dilated too.

        With "body+head" the paper (sec. 4.3) gives no rates; here the head mirrors the body:
        head stage ``i`` goes between the same two resolutions as body stage ``n-1-i`` (in the
        other direction; e.g. 4 <-> 8 for head stage 0 and the last body stage) and takes its rate,
        so FishNet-150's head is dilated 4, 2, 1.
        """
        if self.dilated_parts == "body+head":
            return tuple(reversed(self.body_dilations))
        return (1,) * self.num_stages

    @property
    def body_lateral_channels(self) -> Tuple[int, ...]:
        """Channels each body stage's transfer blocks read: the tail (or stem) at its output stride."""
        return (*reversed(self.tail_channels[:-1]), self.stem_channels)

    @property
    def body_out_channels(self) -> Tuple[int, ...]:
        """Channels after each body stage's concatenation."""
        return tuple(c + t for c, t in zip(self.body_channels, self.body_lateral_channels))

    @property
    def body_in_channels(self) -> Tuple[int, ...]:
        """Channels entering each body stage: the bridge's output, then the previous body stage's."""
        return (self.tail_channels[-1], *self.body_out_channels[:-1])

    @property
    def head_lateral_channels(self) -> Tuple[int, ...]:
        """Channels each head stage's transfer blocks read: the body (or bridge) at its output stride."""
        return (*reversed(self.body_out_channels[:-1]), self.tail_channels[-1])

    @property
    def head_out_channels(self) -> Tuple[int, ...]:
        """Channels after each head stage's concatenation."""
        return tuple(c + t for c, t in zip(self.head_channels, self.head_lateral_channels))

    @property
    def head_in_channels(self) -> Tuple[int, ...]:
        """Channels entering each head stage: the last body stage's output, then the previous head's."""
        return (self.body_out_channels[-1], *self.head_out_channels[:-1])

    @property
    def num_stages(self) -> int:
        """Stages in each of tail, body and head."""
        return len(self.tail_channels)

    def official_constructor_args(self) -> Dict[str, list]:
        """The arguments the official ``fish`` constructor takes for this architecture."""
        return {
            "network_planes": [
                self.stem_channels,
                *self.tail_channels,
                self.tail_channels[-1],
                *self.body_channels,
                *self.head_channels,
            ],
            "num_res_blks": [*self.tail_blocks, self.bridge_blocks, *self.body_blocks, *self.head_blocks],
            "num_trans_blks": [*self.body_transfer_blocks, *self.head_transfer_blocks],
        }


_OFFICIAL_WIDTHS = dict(
    stem_channels=64,
    tail_channels=(128, 256, 512),
    body_channels=(512, 384, 256),
    head_channels=(320, 832, 1600),
)

# The official variants (FishNet-99/150/201 of the paper and the official ImageNet checkpoints).
FISHNET_VARIANTS: Dict[int, FishNetArch] = {
    99: FishNetArch(
        **_OFFICIAL_WIDTHS,
        tail_blocks=(2, 2, 6),
        bridge_blocks=2,
        body_blocks=(1, 1, 1),
        head_blocks=(1, 2, 2),
        body_transfer_blocks=(1, 1, 1),
        head_transfer_blocks=(1, 1, 4),
    ),
    150: FishNetArch(
        **_OFFICIAL_WIDTHS,
        tail_blocks=(2, 4, 8),
        bridge_blocks=4,
        body_blocks=(2, 2, 2),
        head_blocks=(2, 2, 4),
        body_transfer_blocks=(2, 2, 2),
        head_transfer_blocks=(2, 2, 4),
    ),
    201: FishNetArch(
        **_OFFICIAL_WIDTHS,
        tail_blocks=(3, 4, 12),
        bridge_blocks=4,
        body_blocks=(2, 2, 2),
        head_blocks=(2, 3, 10),
        body_transfer_blocks=(2, 2, 2),
        head_transfer_blocks=(2, 2, 9),
    ),
}


# FishNeXt (paper, sec. 4.2, Table 1): an official variant's depths and widths with grouped blocks
# ("the ResNet-based FishNet could be constructed into a ResNeXt-based network"). FishNeXt-150
# (4d) is DEPTH 150 with GROUP_WIDTH 4.
FISHNEXT_VARIANTS: Dict[int, FishNetArch] = {
    150: dataclasses.replace(FISHNET_VARIANTS[150], group_width=4),
}

# What the paper varies on an official variant, so that DEPTH 99/150/201 takes it (the other
# fields make another architecture: set DEPTH 0 and give them all):
#   body_dilations, dilated_parts: the dilation ablation (sec. 4.3, on FishNet-150); dilation
#     leaves no trace in the weights, so the official ImageNet weights still load.
#   downsample: the down-sampling ablation (Table 2, "based on FishNet-150"). The pools have no
#     weights; "conv" adds the strided shortcut convs, which official weights do not hold.
#   group_width: FishNeXt is FishNet with another building block (sec. 4.1: "FishNet is a
#     framework. It does not specify the building block"): FishNeXt-150 is FishNet-150's depths
#     and widths with group width 4. Its 3x3 convs and bottlenecks have other shapes than the
#     official weights'.
VARIANT_OPTIONS = ("body_dilations", "group_width", "downsample", "dilated_parts")


def fishnet_arch(depth: int = 150, **fields: Any) -> FishNetArch:
    """The architecture of FishNet-``depth`` (99, 150 or 201), with ``depth=0`` the custom one that
    ``fields`` (FishNetArch's fields) describe. An official variant takes only ``VARIANT_OPTIONS``.

    The one rule behind ``MODEL.FISHNET.DEPTH`` / ``ARCH`` (:func:`fishnet_arch_from_config`) and
    the LazyConfig files (``L(FishNet)(arch=L(fishnet_arch)(depth=150), ...)``; FishNeXt-150:
    ``L(fishnet_arch)(depth=150, group_width=4)``; a LazyConfig
    cannot hold a FishNetArch, OmegaConf turns dataclasses into plain configs). Lists (OmegaConf's
    ListConfig too) become tuples.
    """
    fields = {name: value if isinstance(value, (int, str)) else tuple(value) for name, value in fields.items()}
    if depth == 0:
        missing = [f.name for f in dataclasses.fields(FishNetArch) if f.name not in fields and f.name not in VARIANT_OPTIONS]
        if missing:
            raise InvalidValue(
                "depth", depth, "asks for a custom architecture, but these are not set: "
                + ", ".join(f"{{{name}}}" for name in missing),
            )
        return FishNetArch(**fields)
    if depth not in FISHNET_VARIANTS:
        raise InvalidValue(
            "depth", depth, f"allowed {sorted(FISHNET_VARIANTS)} (official variants) or 0 (custom architecture)"
        )
    given = [name for name in fields if name not in VARIANT_OPTIONS]
    if given:
        raise InvalidValue(
            "depth",
            depth,
            "selects an official variant, but " + ", ".join(f"{{{name}}}" for name in given)
            + " is set: set {depth} to 0 to use a custom architecture, or leave those unset",
        )
    return dataclasses.replace(FISHNET_VARIANTS[depth], **fields)
