"""A Detectron2 detector (R-CNN, RetinaNet) as a module ``torch.export`` exports with dynamic image
sizes: its own modules and weights, with an export-friendly equivalent of each Detectron2 function
export cannot trace, one module each, written so that it could replace the function upstream:

* :mod:`.preprocess`: ``ImageList.from_tensors`` (padding computed from tensors);
* :mod:`.proposals`: ``find_top_rpn_proposals``;
* :mod:`.pooling`: ``ROIPooler.forward`` (``Boxes`` of a data-dependent number of boxes);
* :mod:`.detections`: ``fast_rcnn_inference_single_image`` and RetinaNet's ``inference_single_image``;
* :mod:`.masks`: ``mask_rcnn_inference``;
* :mod:`.layers`: ``Conv2d.forward`` (v0.6's asks whether its input is empty), in the mask head;
* :mod:`.nms`: ``batched_nms`` (torchvision's branches on the number of boxes);
* :mod:`.boxes`: ``Boxes.clip``, ``nonempty`` and ``area`` on tensors.

They are used only by the export: training and eager inference run Detectron2's own functions.
"""

from .detectors import ExportableRCNN, ExportableRetinaNet, check_exportable_detector, exportable_detector

__all__ = ["ExportableRCNN", "ExportableRetinaNet", "check_exportable_detector", "exportable_detector"]
