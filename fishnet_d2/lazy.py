"""Helpers for LazyConfig (``.py``) config files."""

from typing import Any

from .modeling import FISHNET_VARIANTS, FishNetArch

__all__ = ["fishnet_arch"]


def fishnet_arch(depth: int = 150, **fields: Any) -> FishNetArch:
    """The architecture of FishNet-``depth`` (99, 150 or 201), or with ``depth=0`` the custom one
    that ``fields`` (FishNetArch's fields) describe, as ``MODEL.FISHNET.DEPTH`` / ``ARCH`` do.

    A LazyConfig cannot hold a FishNetArch (OmegaConf turns dataclasses into plain configs), so
    LazyConfig files describe the backbone as
    ``L(FishNet)(arch=L(fishnet_arch)(depth=150), ...)``.
    """
    if depth == 0:
        # OmegaConf hands lists over as ListConfig: FishNetArch holds tuples.
        return FishNetArch(**{name: v if isinstance(v, int) else tuple(v) for name, v in fields.items()})
    if depth not in FISHNET_VARIANTS:
        raise ValueError(
            f"depth={depth!r}: allowed {sorted(FISHNET_VARIANTS)} (official variants) or 0 "
            "(a custom architecture given by FishNetArch's fields)"
        )
    if fields:
        raise ValueError(f"depth={depth} selects an official variant, but fields {sorted(fields)} are given; use depth=0")
    return FISHNET_VARIANTS[depth]
