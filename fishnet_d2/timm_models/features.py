"""Which of FishNet's features a timm model lists (``feature_info``), in the order timm requires,
and how ``out_indices`` select among them.

timm requires a model's features in order of non-decreasing stride (its ``FeatureInfo`` asserts
it), and its consumers read index ``i`` as the ``i``-th level of a pyramid
(segmentation_models_pytorch's ``tu-`` encoders ask for indices ``0 .. depth - 2`` of a model
whose first feature has stride 4). FishNet computes its features down (tail), up (body) and down
again (head), with three features at each stride, so one list cannot be both complete and a
pyramid. ``feature_location`` chooses, as timm's HRNet's argument of that name does:

* ``"head"`` (default): head2, head3, head4, head5 (strides 4 to 32), the features the paper
  attaches FPN to: a pyramid, one feature per stride.
* ``"all"``: all twelve, sorted by stride, at each stride in the order FishNet computes them
  (stem or tail, then body or bridge, then head): ``out_indices`` reaches the tail and the body
  too; by default it takes the head's four.
"""

from typing import List, Optional, Sequence, Tuple, Union

from ..modeling import FishNetArch
from ..modeling.arch import feature_name

__all__ = [
    "FEATURE_LOCATIONS",
    "FeatureIndices",
    "computed_features",
    "check_feature_location",
    "listed_features",
    "default_out_indices",
    "take_indices",
]

FEATURE_LOCATIONS = ("head", "all")

# What timm accepts as ``out_indices`` (and ``forward_intermediates``' ``indices``): None for
# every listed feature, n for the last n, or a sequence of indices (negative ones from the end).
FeatureIndices = Union[None, int, Sequence[int]]


def computed_features(arch: FishNetArch) -> List[Tuple[str, int]]:
    """``(name, level)`` of every feature of a FishNet of ``arch``, in the order it computes them
    (the names of ``fishnet_d2.FishNet``'s ``out_features``; level = log2 of the stride)."""
    return [
        (feature_name("stem", arch.stem_level), arch.stem_level),
        *((feature_name("tail", level), level) for level in arch.tail_levels),
        (feature_name("bridge", arch.bridge_level), arch.bridge_level),
        *((feature_name("body", level), level) for level in arch.body_levels),
        # The first head stage's refinement of the last body stage, before it down-samples: the
        # head's feature at that stride (FishNet's head2).
        (feature_name("head", arch.body_levels[-1]), arch.body_levels[-1]),
        *((feature_name("head", level), level) for level in arch.head_levels),
    ]


def check_feature_location(feature_location: str) -> None:
    if feature_location not in FEATURE_LOCATIONS:
        raise ValueError(
            f"feature_location={feature_location!r}: allowed 'head' (head2..head5, one feature per stride, "
            "the default) or 'all' (every feature: stem, tail, bridge, body and head, sorted by stride)"
        )


def listed_features(arch: FishNetArch, feature_location: str) -> List[Tuple[str, int]]:
    """``(name, level)`` of the features ``feature_location`` lists, in timm's order (by stride)."""
    check_feature_location(feature_location)
    features = computed_features(arch)
    if feature_location == "head":
        features = [f for f in features if f[0].startswith("head")]
    return sorted(features, key=lambda f: f[1])  # stable: at one stride, the order computed


def default_out_indices(arch: FishNetArch, feature_location: str) -> Tuple[int, ...]:
    """The head's features among those listed: what ``features_only=True`` returns by default."""
    return tuple(i for i, (name, _) in enumerate(listed_features(arch, feature_location)) if name.startswith("head"))


def take_indices(indices: FeatureIndices, names: Sequence[str], what: str = "out_indices", hint: str = "") -> List[int]:
    """``indices`` as timm reads them (None: all, n: the last n, negative: from the end) among the
    listed features ``names``; ValueError naming what is allowed (and ``hint``)."""
    n = len(names)
    allowed = (
        f"the features listed are {', '.join(f'{i}: {name}' for i, name in enumerate(names))}; allowed: indices "
        f"0 to {n - 1} (or -{n} to -1), a number 1 to {n} of last features, or None for all{hint}"
    )
    if indices is None:
        return list(range(n))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= n:
            raise ValueError(f"{what}={indices}: {allowed}")
        return list(range(n - indices, n))
    try:
        items = list(indices)
    except TypeError:
        raise ValueError(f"{what}={indices!r}: {allowed}") from None
    bad: Optional[object] = next(
        (i for i in items if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n), None
    )
    if bad is not None or not items:
        raise ValueError(f"{what}={indices!r}: {'empty' if not items else f'{bad!r} is not one of them'}; {allowed}")
    return [i % n for i in items]

