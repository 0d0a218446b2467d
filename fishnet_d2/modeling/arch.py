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
    "DILATED_PARTS",
    "fishnet_arch",
    "feature_name",
    "official_body_dilations",
]

# The values of FishNetArch.dilated_parts (its doc says what each dilates).
DILATED_PARTS = ("body", "body+head", "none")
# FishNetArch's fields that are not positive integers (checked each on its own).
_CHOICES = ("group_width", "downsample", "dilated_parts")
# The stem's output level (log2 of its stride): a stride-2 conv, then a stride-2 max-pool.
_STEM_LEVEL = 2


def official_body_dilations(num_stages: int) -> Tuple[int, ...]:
    """The official model's dilation of each body stage's refining blocks: 1, 2, 4, ... (``2**i``
    in body stage ``i``; paper, sec. 3.2 and 4.3: "we adopt dilated convolution in the fish body").
    Dilation leaves no trace in the weights: an official checkpoint is read with these."""
    return tuple(2**i for i in range(num_stages))


def feature_name(part: str, level: int) -> str:
    """The name of a stage's output feature: its part ("stem", "tail", "bridge", "body", "head")
    and ``level``, log2 of its stride ("tail3", "body2", "head5"). The stem and the bridge are
    one stage each and keep their part's name."""
    return part if part in ("stem", "bridge") else f"{part}{level}"


def _field(doc: str, **default: Any) -> Any:
    """A FishNetArch field and what it means: ``doc`` is its one description, which
    ``MODEL.FISHNET``'s keys made from the fields (:func:`~fishnet_d2.config.add_fishnet_config`)
    point at. ``default``: ``default=value`` or nothing (the field must be given)."""
    return dataclasses.field(metadata={"doc": doc}, **default)


@dataclass(frozen=True)
class FishNetArch:
    """Widths and depths of a FishNet, and where its stages run.

    A FishNet has ``n`` tail stages (strides 4->8->...), a bridge at the lowest resolution, ``n``
    body stages (UR-blocks, back up to stride 4) and ``n`` head stages (DR-blocks, down again).
    Every tuple below has one entry per stage, in the order the stages run. The bridge keeps the
    width of the last tail stage (the official model requires it: its score unit maps C -> C/2 -> 2C
    and its blocks 2C -> C, with C the width of the last tail stage).

    The official constructor's ``network_planes`` is
    ``[stem_channels, *tail_channels, tail_channels[-1], *body_channels, *head_channels]``
    and its ``num_res_blks`` is ``[*tail_blocks, bridge_blocks, *body_blocks, *head_blocks]``.
    Each field's ``doc`` (``dataclasses.fields(FishNetArch)[i].metadata["doc"]``) says what it is;
    ``MODEL.FISHNET``'s keys are made from the fields.
    """

    stem_channels: int = _field("Width of the stem's output (its first two convs have half of it).")
    tail_channels: Tuple[int, ...] = _field("Width of each tail stage (the bridge keeps the last one).")
    body_channels: Tuple[int, ...] = _field(
        "Width of each body stage's refined map (before concatenation with the tail); each must "
        "divide the channels entering its stage (channel-wise summation, paper eq. 8)."
    )
    head_channels: Tuple[int, ...] = _field(
        "Width of each head stage's refined map (before concatenation with the body)."
    )
    tail_blocks: Tuple[int, ...] = _field("Residual blocks in each tail stage.")
    bridge_blocks: int = _field("Residual blocks in the bridge.")
    body_blocks: Tuple[int, ...] = _field("Residual blocks (M) in each body stage.")
    head_blocks: Tuple[int, ...] = _field("Residual blocks (M) in each head stage.")
    body_transfer_blocks: Tuple[int, ...] = _field("Transfer blocks (T) in each body stage.")
    head_transfer_blocks: Tuple[int, ...] = _field("Transfer blocks (T) in each head stage.")
    body_dilations: Tuple[int, ...] = _field(
        "Dilation of the body's refining blocks, one per body stage; the official model's are "
        "1, 2, 4 (paper, sec. 3.2 and 4.3). Transfer blocks are not dilated; dilated_parts says "
        "where these rates apply.",
        default=official_body_dilations(3),
    )
    group_width: int = _field(
        "FishNeXt (paper, sec. 4.2, Table 1): > 0 makes every residual block ResNeXt's grouped "
        "bottleneck, with groups of group_width channels at stride 4, doubling with each halving "
        "of the resolution; FishNeXt-150 (4d) is FishNet-150 with 4. 0: FishNet's ungrouped blocks "
        "(the official model).",
        default=0,
    )
    downsample: str = _field(
        "How the tail and the head halve the resolution (the paper's Table 2): 'max2' (2x2 "
        "max-pool, stride 2: the paper's choice and the official model), 'max3' (3x3 max-pool, "
        "stride 2), 'avg2' (2x2 average pool, stride 2) or 'conv' (the last residual block of "
        "each tail and head stage has stride 2 and a strided 1x1 conv on its shortcut, weights the "
        "official checkpoints do not hold).",
        default="max2",
    )
    dilated_parts: str = _field(
        "Where the refining blocks are dilated (the paper's dilation ablation, sec. 4.3): 'body' "
        "(the official model: body_dilations), 'body+head' (the head too, with the body's rates "
        "mirrored: 4, 2, 1 for FishNet-150's head) or 'none' (body_dilations unused).",
        default="body",
    )

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
        if self.dilated_parts not in DILATED_PARTS:
            raise InvalidValue("dilated_parts", self.dilated_parts, f"allowed {list(DILATED_PARTS)}")
        g = self.group_width
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise InvalidValue(
                "group_width", g, "allowed 0 (FishNet: no grouping) or a positive integer (FishNeXt; the paper's 4d: 4)"
            )
        # downsample is checked where it is used, by the stages (stages.DOWNSAMPLINGS), and the
        # group width of each block by that block (blocks.GroupedPreActBottleneck).

    # Levels: log2 of a feature's stride. The stem (a stride-2 conv, then a stride-2 max-pool)
    # ends at level 2; each tail stage halves the resolution, down to the bridge's level; each
    # body stage doubles it, back up to the stem's; each head stage halves it again.

    @property
    def stem_level(self) -> int:
        return _STEM_LEVEL

    @property
    def tail_levels(self) -> Tuple[int, ...]:
        """The output level of each tail stage."""
        return tuple(range(self.stem_level + 1, self.bridge_level + 1))

    @property
    def bridge_level(self) -> int:
        """The lowest resolution's: inputs must be multiples of ``2**bridge_level``."""
        return self.stem_level + self.num_stages

    @property
    def body_levels(self) -> Tuple[int, ...]:
        """The output level of each body stage."""
        return tuple(range(self.bridge_level - 1, self.stem_level - 1, -1))

    @property
    def head_levels(self) -> Tuple[int, ...]:
        """The output level of each head stage. The first head stage's refined map (before it
        down-samples) is the head's feature at the last body stage's level."""
        return tuple(range(self.stem_level + 1, self.bridge_level + 1))

    # The levels at which each stage's residual blocks run, i.e. their input's. A tail stage's
    # blocks run before its down-sampling; a body stage refines its input before up-sampling and
    # transfers the tail feature at its output level; a head stage refines its input before
    # down-sampling and transfers the body feature at its output level.

    @property
    def _tail_block_levels(self) -> Tuple[int, ...]:
        return tuple(level - 1 for level in self.tail_levels)

    @property
    def _body_refine_levels(self) -> Tuple[int, ...]:
        return tuple(level + 1 for level in self.body_levels)

    @property
    def _head_refine_levels(self) -> Tuple[int, ...]:
        return tuple(level - 1 for level in self.head_levels)

    # The group width of each stage's blocks (group_width_at their level); 0: not grouped.
    # Transfer blocks run at their stage's output level.

    @property
    def tail_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self._tail_block_levels)

    @property
    def bridge_group_width(self) -> int:
        return self.group_width_at(self.bridge_level)

    @property
    def body_group_widths(self) -> Tuple[int, ...]:
        """Of each body stage's refining blocks M."""
        return tuple(self.group_width_at(level) for level in self._body_refine_levels)

    @property
    def body_transfer_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self.body_levels)

    @property
    def head_group_widths(self) -> Tuple[int, ...]:
        """Of each head stage's refining blocks M."""
        return tuple(self.group_width_at(level) for level in self._head_refine_levels)

    @property
    def head_transfer_group_widths(self) -> Tuple[int, ...]:
        return tuple(self.group_width_at(level) for level in self.head_levels)

    def group_width_at(self, level: int) -> int:
        """FishNeXt's group width (channels per group of the grouped 3x3 convs) at stride
        ``2**level``: ``group_width`` at the stem's level, twice as many with each halving of the
        resolution; 0 for FishNet's ungrouped blocks.

        The paper (sec. 4.2): "the number of channels in a group for each block (UR/DR block and
        transfer block) of the same stage should be the same. The width of a single group will be
        doubled once the stage index increase by 1". Its stage index ``s`` is the resolution (eq.
        5-9 concatenate tail, body and head features of the same ``s``), so the group width
        follows the resolution, as in ResNeXt (4d at stride 4, 8d at 8, 16d at 16, 32d at 32): the
        smallest group, at stride 4 (the stem's output, where the first blocks run), has
        ``group_width`` channels ("4d ... the minimum number of channels for a single group is
        4"). The stem's convs are not residual blocks and stay ungrouped, as ResNeXt's stem.
        """
        return self.group_width * 2 ** (level - self.stem_level)

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

# What the paper varies on an official variant, so that DEPTH 99/150/201 takes it: the fields with
# a default, the official model's (the other fields make another architecture: set DEPTH 0 and
# give them all):
#   body_dilations, dilated_parts: the dilation ablation (sec. 4.3, on FishNet-150); dilation
#     leaves no trace in the weights, so the official ImageNet weights still load.
#   downsample: the down-sampling ablation (Table 2, "based on FishNet-150"). The pools have no
#     weights; "conv" adds the strided shortcut convs, which official weights do not hold.
#   group_width: FishNeXt is FishNet with another building block (sec. 4.1: "FishNet is a
#     framework. It does not specify the building block"): FishNeXt-150 is FishNet-150's depths
#     and widths with group width 4. Its 3x3 convs and bottlenecks have other shapes than the
#     official weights'.
VARIANT_OPTIONS = tuple(f.name for f in fields(FishNetArch) if f.default is not dataclasses.MISSING)


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
