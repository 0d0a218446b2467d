"""The programs a user runs on top of the core package: ``predict`` (images, videos, a camera),
``export`` (TorchScript, ONNX), ``demo`` (the embedded synthetic dataset and the end-to-end demo)
and the drawing they share (``visualization``). They import the core (``fishnet_d2.modeling``,
``model_zoo``, ``weights``, ``engine``); the core never imports them. ``tools/*.py`` are their
command lines."""
