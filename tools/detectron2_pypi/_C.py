"""Stand-in for ``detectron2._C`` in the Python-only build of detectron2 v0.6.

This file is NOT part of fishnet_d2. ``tools/detectron2_pypi/build.py`` copies it into the
detectron2 package it builds from the registry's ``pb1-detectron2==0.6`` sdist, which ships the
official v0.6 Python sources without the C++/CUDA sources (``detectron2/layers/csrc``).

detectron2 imports ``detectron2._C`` at module top in ``layers/`` and ``evaluation/``; with this
stand-in those modules import, and everything built from pure PyTorch/torchvision ops works:
Mask R-CNN, Faster R-CNN, RetinaNet, semantic and panoptic FPN, training, COCO evaluation through
pycocotools' ``COCOeval``. The compiled ops below have no Python implementation here; each one
raises a RuntimeError that names the op and says how to get a compiled detectron2.
"""

from typing import NoReturn

_HOW_TO_GET_THEM = (
    "This detectron2 is the Python-only build of v0.6 (from pb1-detectron2, without C++ sources), "
    "and detectron2._C is a stand-in. Install a compiled detectron2 to use this op: "
    "`D2_SOURCE=git make test` (or `pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'`), which builds detectron2 main "
    "with its C++/CUDA ops."
)


def _compiled_op(name: str, what: str):
    def unavailable(*args, **kwargs) -> NoReturn:
        raise RuntimeError(f"detectron2._C.{name} ({what}) is a compiled op. {_HOW_TO_GET_THEM}")

    unavailable.__name__ = name
    unavailable.__qualname__ = name
    unavailable.__doc__ = f"Unavailable compiled op: {what}."
    return unavailable


_UNAVAILABLE = {
    "box_iou_rotated": "IoU of rotated boxes",
    "roi_align_rotated_forward": "ROIAlignRotated forward",
    "roi_align_rotated_backward": "ROIAlignRotated backward",
    "deform_conv_forward": "deformable convolution forward",
    "deform_conv_backward_input": "deformable convolution backward (input)",
    "deform_conv_backward_filter": "deformable convolution backward (filter)",
    "modulated_deform_conv_forward": "modulated deformable convolution forward",
    "modulated_deform_conv_backward": "modulated deformable convolution backward",
    "InstanceAnnotation": "fast COCO evaluator (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
    "COCOevalEvaluateImages": "fast COCO evaluator (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
    "COCOevalAccumulate": "fast COCO evaluator (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
}
globals().update({name: _compiled_op(name, what) for name, what in _UNAVAILABLE.items()})


# Read by detectron2.utils.collect_env.
def get_compiler_version() -> str:
    return "none: Python-only build, detectron2._C is a stand-in"


def get_cuda_version() -> str:
    return "none: Python-only build, detectron2._C is a stand-in"


def has_cuda() -> bool:
    return False
