"""Compare an exported detector's output with eager mode's as detections, not as arrays.

Two runtimes that compute the same model round differently in the last bits, and a detector's
output is a set: detections of equal score (many are exactly 1.0 in float32 once a model is
trained) come in either order, and which of two tied detections survives NMS or the top-k cut-off
(``TEST.DETECTIONS_PER_IMAGE``) is the runtime's choice. So the detections are paired first: an
exported detection of the same class whose box is within the tolerance of an eager one's. On the
pairs, every output (boxes, scores, classes, masks) is compared with the tolerance. A detection
left unpaired is accepted only as a tie: its score equal, within the tolerance, to that of an
unpaired detection of the other output, and no more than :data:`MAX_UNMATCHED_SHARE` of the
detections unpaired. A wrong model (a changed weight, another ROIAlign sampling, outputs in the
wrong order) moves most boxes or scores, and is refused.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["MAX_UNMATCHED_SHARE", "Difference", "DetectionComparison", "compare_instances"]

# At most this share of an image's eager detections (rounded up) may be left unpaired on either
# side, each as a tie. Ties change a few detections; a wrong model changes most.
MAX_UNMATCHED_SHARE = 0.2


@dataclass
class Difference:
    """The largest difference of one output over the paired detections of one image."""

    image: str
    field: str
    max_abs: float  # max |exported - eager| over the paired detections
    scale: float  # max |eager| over all of eager's detections: the output's scale

    @property
    def relative(self) -> float:
        """``max_abs / scale`` (``max_abs`` when the scale is 0)."""
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs


@dataclass
class DetectionComparison:
    """The exported model's detections of one image against eager mode's."""

    image: str
    eager: int  # number of detections
    exported: int
    matched: int  # pairs
    unmatched_eager: int
    unmatched_exported: int
    untied: int  # unpaired detections whose score ties with no unpaired one of the other output
    differences: List[Difference] = field(default_factory=list)  # per output, over the pairs

    @property
    def allowed_unmatched(self) -> int:
        return math.ceil(MAX_UNMATCHED_SHARE * max(self.eager, self.exported))

    @property
    def max_relative(self) -> float:
        return max((d.relative for d in self.differences), default=0.0)

    def failure(self, tolerance: float) -> Optional[str]:
        """Why the exported detections are not eager mode's, or None."""
        unmatched = max(self.unmatched_eager, self.unmatched_exported)
        if self.untied or unmatched > self.allowed_unmatched:
            return (
                f"{self.image}: {self.unmatched_eager} of eager mode's {self.eager} detections and "
                f"{self.unmatched_exported} of the exported model's {self.exported} have no counterpart "
                f"(same class, box within --tolerance {tolerance:g}), {self.untied} of them not a tie in "
                f"score; allowed: at most {self.allowed_unmatched} a side, each a tie"
            )
        worst = max(self.differences, key=lambda d: d.relative, default=None)
        if worst is not None and worst.relative > tolerance:
            return (
                f"the exported model differs from eager mode by {worst.relative:.3g} of the output scale "
                f"({worst.field}, {self.image}), more than --tolerance {tolerance:g}"
            )
        return None


def _fields(instances: Instances) -> Dict[str, Tensor]:
    return {
        k: (v.tensor if isinstance(v, Boxes) else v).detach().float().cpu()
        for k, v in instances.get_fields().items()
    }


def _scale(value: Tensor) -> float:
    return float(value.abs().max()) if value.numel() else 0.0


def compare_instances(image: str, exported: Instances, eager: Instances, tolerance: float) -> DetectionComparison:
    """Pair ``exported``'s detections with ``eager``'s (see the module's docstring) and measure the
    differences of every output of ``eager`` (boxes, scores, classes, masks) over the pairs.

    Raises:
        ValueError: the exported model lacks an output eager mode has.
    """
    expected, actual = _fields(eager), _fields(exported)
    for name in expected:
        if name not in actual:
            raise ValueError(f"{image}: the exported model gives no {name!r}; it gives {sorted(actual)}")
    boxes, other_boxes = expected["pred_boxes"], actual["pred_boxes"].reshape(-1, 4)
    scores, other_scores = expected["scores"], actual["scores"].reshape(-1)
    box_limit = tolerance * max(_scale(boxes), 1e-12)
    # distance[i, j]: how far exported j's box is from eager i's; inf for another class.
    distance = (boxes[:, None, :] - other_boxes[None, :, :]).abs().amax(dim=2)
    distance[expected["pred_classes"][:, None] != actual["pred_classes"].reshape(-1)[None, :]] = float("inf")
    pairs: List[tuple] = []
    free = torch.ones(len(other_boxes), dtype=torch.bool)
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        candidates = torch.where(free & (distance[i] <= box_limit))[0]
        if len(candidates):
            j = int(candidates[torch.argmin(distance[i, candidates])])
            free[j] = False
            pairs.append((i, j))
    paired_eager = torch.zeros(len(boxes), dtype=torch.bool)
    paired_eager[[i for i, _ in pairs]] = True
    lone_eager, lone_exported = scores[~paired_eager], other_scores[free]
    score_limit = tolerance * max(_scale(scores), 1e-12)
    ties = (lone_eager[:, None] - lone_exported[None, :]).abs() <= score_limit
    untied = int((~ties.any(dim=1)).sum()) + int((~ties.any(dim=0)).sum())

    differences = []
    eager_index = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    exported_index = torch.tensor([j for _, j in pairs], dtype=torch.long)
    for name, value in expected.items():
        other = actual[name].reshape(len(other_boxes), *value.shape[1:])
        a, b = value[eager_index], other[exported_index]
        max_abs = float((a - b).abs().max()) if a.numel() else 0.0
        differences.append(Difference(image, name, max_abs, _scale(value)))
    return DetectionComparison(
        image=image,
        eager=len(boxes),
        exported=len(other_boxes),
        matched=len(pairs),
        unmatched_eager=int((~paired_eager).sum()),
        unmatched_exported=int(free.sum()),
        untied=untied,
        differences=differences,
    )
