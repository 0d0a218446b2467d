"""FishNet architectures as data: one typed record per architecture, the official variants, and
the one rule that turns a depth (or a custom description) into an architecture."""

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Dict, Tuple

from .errors import InvalidValue

__all__ = ["FishNetArch", "FISHNET_VARIANTS", "VARIANT_OPTIONS", "fishnet_arch"]


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
    body_dilations: Tuple[int, ...] = (1, 2, 4)

    def __post_init__(self) -> None:
        n = len(self.tail_channels)
        if n < 1:
            raise InvalidValue("tail_channels", self.tail_channels, "empty; a FishNet has at least one stage per part")
        for f in fields(self):
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


# What may change on an official variant without making it another architecture: the dilation
# leaves no trace in the weights (the paper's ablation, sec. 4.3, varies it on FishNet-150).
VARIANT_OPTIONS = ("body_dilations",)


def fishnet_arch(depth: int = 150, **fields: Any) -> FishNetArch:
    """The architecture of FishNet-``depth`` (99, 150 or 201), with ``depth=0`` the custom one that
    ``fields`` (FishNetArch's fields) describe. An official variant takes only ``VARIANT_OPTIONS``.

    The one rule behind ``MODEL.FISHNET.DEPTH`` / ``ARCH`` (:func:`fishnet_arch_from_config`) and
    the LazyConfig files (``L(FishNet)(arch=L(fishnet_arch)(depth=150), ...)``: a LazyConfig
    cannot hold a FishNetArch, OmegaConf turns dataclasses into plain configs). Lists (OmegaConf's
    ListConfig too) become tuples.
    """
    fields = {name: value if isinstance(value, int) else tuple(value) for name, value in fields.items()}
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
