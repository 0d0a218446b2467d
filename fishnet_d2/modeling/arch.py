"""FishNet architectures as data: one typed record per architecture, and the official variants."""

from dataclasses import dataclass, fields
from typing import Dict, Tuple

__all__ = ["FishNetArch", "FISHNET_VARIANTS"]


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
            raise ValueError("tail_channels is empty; a FishNet has at least one stage per part")
        per_stage = [f.name for f in fields(self) if f.name.endswith(("_channels", "_blocks", "_dilations"))]
        for name in per_stage:
            value = getattr(self, name)
            if name in ("stem_channels", "bridge_blocks"):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name}={value!r}: must be a positive integer")
                continue
            if len(value) != n or not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(
                    f"{name}={tuple(value)!r}: must be {n} positive integers, one per stage "
                    f"(tail_channels has {n} stages)"
                )
        for name in ("stem_channels", "tail_channels", "body_channels", "head_channels"):
            widths = getattr(self, name)
            if min(widths if isinstance(widths, tuple) else (widths,)) < 4:
                raise ValueError(f"{name}={widths!r}: widths must be >= 4 (bottlenecks use width / 4)")
        if self.tail_channels[-1] < 16:
            raise ValueError(
                f"tail_channels[-1]={self.tail_channels[-1]}: must be >= 16 "
                "(the bridge's SE unit squeezes it by 16)"
            )
        for i, (c_in, c_out) in enumerate(zip(self.body_in_channels, self.body_channels)):
            if c_in % c_out:
                raise ValueError(
                    f"body_channels[{i}]={c_out}: must divide the {c_in} channels entering body stage "
                    f"{i}, which the UR-block reduces by channel-wise summation (paper, eq. 8); "
                    f"allowed: divisors of {c_in}"
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
