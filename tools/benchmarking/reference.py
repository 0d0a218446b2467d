"""A plain eager FishNet: the benchmark's baseline for what fishnet_d2's fast paths buy.

A straightforward port of the official network (github.com/kevin-ssy/FishNet, ``fishnet.py``):
NCHW, Detectron2's ``FrozenBatchNorm2d`` (or any ``get_norm``), every op out of place, no
folded norms, convolutions as ``nn.Conv2d``. Its modules have the names of
:class:`fishnet_d2.FishNet`'s, so that it loads a FishNet's ``state_dict`` and computes the same
features (``tests/test_benchmark_tool.py`` checks it in float64). Pool down-sampling only (the
official "max2" and the ablation's "max3", "avg2"), FishNeXt's groups and the dilations included.
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import get_norm
from detectron2.modeling import Backbone
from torch import nn

from fishnet_d2 import FishNetArch

__all__ = ["PlainFishNet"]


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "GN" and channels % 32:
        return nn.GroupNorm(__import__("math").gcd(32, channels), channels)
    return get_norm(norm, channels) or nn.Identity()


def pool(kind: str) -> nn.Module:
    return {
        "max2": lambda: nn.MaxPool2d(2, 2),
        "max3": lambda: nn.MaxPool2d(3, 2, padding=1),
        "avg2": lambda: nn.AvgPool2d(2, 2),
    }[kind]()


class Projection(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm: str):
        super().__init__()
        self.norm = norm_layer(norm, c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.norm(x)))


class ChannelSum(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, c // self.k, self.k, h, w).sum(2)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, shortcut: nn.Module, norm: str, dilation: int = 1, group_width: int = 0):
        super().__init__()
        mid = c_out // 2 if group_width else c_out // 4
        groups = mid // group_width if group_width else 1
        self.norm1 = norm_layer(norm, c_in)
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.norm2 = norm_layer(norm, mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.norm3 = norm_layer(norm, mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, bias=False)
        self.shortcut = shortcut

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        out = self.conv3(F.relu(self.norm3(out)))
        return out + self.shortcut(x)


def blocks(c_in, c_out, n, first_shortcut, norm, dilation=1, group_width=0) -> nn.Sequential:
    out = [Bottleneck(c_in, c_out, first_shortcut, norm, dilation, group_width)]
    out += [Bottleneck(c_out, c_out, nn.Identity(), norm, dilation, group_width) for _ in range(n - 1)]
    return nn.Sequential(*out)


def projection_or_identity(c_in, c_out, norm):
    return nn.Identity() if c_in == c_out else Projection(c_in, c_out, norm)


class ConvNormReLU(nn.Module):
    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm = norm_layer(norm, c_out)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class Stem(nn.Module):
    def __init__(self, c_in, c_out, norm):
        super().__init__()
        self.conv1 = ConvNormReLU(c_in, c_out // 2, 2, norm)
        self.conv2 = ConvNormReLU(c_out // 2, c_out // 2, 1, norm)
        self.conv3 = ConvNormReLU(c_out // 2, c_out, 1, norm)

    def forward(self, x):
        return F.max_pool2d(self.conv3(self.conv2(self.conv1(x))), 3, 2, 1)


class Tail(nn.Module):
    def __init__(self, c_in, c_out, n, norm, downsample, group_width):
        super().__init__()
        self.blocks = blocks(c_in, c_out, n, projection_or_identity(c_in, c_out, norm), norm, 1, group_width)
        self.down = pool(downsample)

    def forward(self, x):
        return self.down(self.blocks(x))


class Score(nn.Module):
    def __init__(self, c_in, c_out, global_pool, norm):
        super().__init__()
        self.norm1 = norm_layer(norm, c_in)
        self.conv1 = nn.Conv2d(c_in, c_in // 2, 1, bias=False)
        self.norm2 = norm_layer(norm, c_in // 2)
        self.global_pool = global_pool
        self.fc = nn.Conv2d(c_in // 2, c_out, 1, bias=True)

    def forward(self, x):
        x = F.relu(self.norm2(self.conv1(F.relu(self.norm1(x)))))
        if self.global_pool:
            x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x)


class SE(nn.Module):
    def __init__(self, c_in, c_out, norm):
        super().__init__()
        self.norm = norm_layer(norm, c_in)
        self.squeeze = nn.Conv2d(c_in, c_out // 16, 1, bias=True)
        self.excite = nn.Conv2d(c_out // 16, c_out, 1, bias=True)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(x))))


class Bridge(nn.Module):
    def __init__(self, c, n, norm, group_width):
        super().__init__()
        self.score = Score(c, 2 * c, False, norm)
        self.attention = SE(2 * c, c, norm)
        self.blocks = blocks(2 * c, c, n, Projection(2 * c, c, norm), norm, 1, group_width)

    def forward(self, x):
        s = self.score(x)
        a = self.attention(s)
        return self.blocks(s) * a + a


class Body(nn.Module):
    def __init__(self, c_in, c_refined, c_lateral, n, n_transfer, dilation, norm, gw, transfer_gw):
        super().__init__()
        k = c_in // c_refined
        shortcut = ChannelSum(k) if k > 1 else nn.Identity()
        self.refine = blocks(c_in, c_refined, n, shortcut, norm, dilation, gw)
        self.transfer = blocks(c_lateral, c_lateral, n_transfer, nn.Identity(), norm, 1, transfer_gw)

    def forward(self, x, lateral):
        up = F.interpolate(self.refine(x), scale_factor=2.0, mode="nearest")
        return torch.cat([up, self.transfer(lateral)], dim=1)


class Head(nn.Module):
    def __init__(self, c_in, c_refined, c_lateral, n, n_transfer, dilation, norm, downsample, gw, transfer_gw):
        super().__init__()
        self.refine = blocks(c_in, c_refined, n, projection_or_identity(c_in, c_refined, norm), norm, dilation, gw)
        self.transfer = blocks(c_lateral, c_lateral, n_transfer, nn.Identity(), norm, 1, transfer_gw)
        self.down = pool(downsample)

    def forward(self, x, lateral):
        refined = self.refine(x)
        return refined, torch.cat([self.down(refined), self.transfer(lateral)], dim=1)


class PlainFishNet(Backbone):
    """FishNet as the official code writes it (see the module docstring); features by the names
    of :class:`fishnet_d2.FishNet`'s (for 3 stages per part)."""

    def __init__(
        self,
        arch: FishNetArch,
        *,
        norm: str = "FrozenBN",
        out_features: Optional[Sequence[str]] = None,
        num_classes: int = 0,
    ):
        super().__init__()
        if arch.downsample not in ("max2", "max3", "avg2"):
            raise ValueError(f"PlainFishNet: downsample={arch.downsample!r}: allowed max2, max3, avg2")
        a, n = arch, arch.num_stages
        self.stem = Stem(3, a.stem_channels, norm)
        tail, c = [], a.stem_channels
        for i in range(n):
            tail.append(Tail(c, a.tail_channels[i], a.tail_blocks[i], norm, a.downsample, a.tail_group_widths[i]))
            c = a.tail_channels[i]
        self.tail = nn.ModuleList(tail)
        self.bridge = Bridge(c, a.bridge_blocks, norm, a.bridge_group_width)
        self.body = nn.ModuleList(
            Body(a.body_in_channels[i], a.body_channels[i], a.body_lateral_channels[i], a.body_blocks[i],
                 a.body_transfer_blocks[i], a.body_refine_dilations[i], norm, a.body_group_widths[i],
                 a.body_transfer_group_widths[i])
            for i in range(n)
        )  # fmt: skip
        self.head = nn.ModuleList(
            Head(a.head_in_channels[i], a.head_channels[i], a.head_lateral_channels[i], a.head_blocks[i],
                 a.head_transfer_blocks[i], a.head_refine_dilations[i], norm, a.downsample,
                 a.head_group_widths[i], a.head_transfer_group_widths[i])
            for i in range(n)
        )  # fmt: skip
        self.classifier = Score(a.head_out_channels[-1], num_classes, True, norm) if num_classes else None
        self.bridge_level = 2 + n
        self._out_features = list(out_features or [f"head{2 + i}" for i in range(n + 1)])

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.stem(x)
        features: Dict[str, torch.Tensor] = {"stem": x}
        tail_by_level: List[torch.Tensor] = [x]
        for i, stage in enumerate(self.tail):
            x = stage(x)
            features[f"tail{3 + i}"] = x
            tail_by_level.append(x)
        x = self.bridge(x)
        features["bridge"] = x
        body_by_level = [x]
        for i, stage in enumerate(self.body):
            x = stage(x, tail_by_level[-2 - i])
            features[f"body{self.bridge_level - 1 - i}"] = x
            body_by_level.append(x)
        for i, stage in enumerate(self.head):
            refined, x = stage(x, body_by_level[-2 - i])
            if i == 0:
                features["head2"] = refined
            features[f"head{3 + i}"] = x
        if self.classifier is not None:
            features["linear"] = self.classifier(x).flatten(1)
        return {name: features[name] for name in self._out_features}
