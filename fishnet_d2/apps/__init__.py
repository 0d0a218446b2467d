"""The programs a user runs on top of the core package: ``predict`` (images, videos, a camera),
``export`` (TorchScript, ONNX), ``demo`` (the end-to-end demo) and ``data`` (its synthetic
dataset), ``benchmark`` (speed and memory against Detectron2's ResNets) and the drawing they share
(``visualization``). They import the core (``fishnet_d2.modeling``,
``model_zoo``, ``weights``, ``engine``); the core never imports them. ``tools/*.py`` are their
command lines."""
