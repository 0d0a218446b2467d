"""COCO train2017 / val2017 loaders and evaluator for FishNet models: Detectron2's
common/data/coco.py, reading RGB images (as the official ImageNet models do)."""

from detectron2 import model_zoo

dataloader = model_zoo.get_config("common/data/coco.py").dataloader

dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train mapper's format
# pycocotools' reference COCOeval: identical numbers on every detectron2 build.
dataloader.evaluator.use_fast_impl = False
