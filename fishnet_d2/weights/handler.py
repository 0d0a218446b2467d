"""``fishnet://ImageNet/<name>``: the published FishNet ImageNet weights wherever Detectron2 takes a
path (``MODEL.WEIGHTS``, a LazyConfig's ``train.init_checkpoint``, ``PathManager.get_local_path``).

Importing this module (``import fishnet_d2`` does) registers :class:`FishNetWeightsHandler` in
Detectron2's ``PathManager``, as Detectron2 registers ``detectron2://``. The names, and where each
file comes from, are in :mod:`fishnet_d2.weights.zoo`; fetching, checking and caching in
:mod:`fishnet_d2.weights.download`.
"""

from typing import IO, Any, List, Union

from detectron2.utils.file_io import PathHandler, PathManager

from .download import fetch_named_weights
from .zoo import SCHEME

__all__ = ["FishNetWeightsHandler"]


class FishNetWeightsHandler(PathHandler):
    """Resolves ``fishnet://ImageNet/<name>`` to the converted weights in the local cache,
    fetching them on first use. Read-only."""

    def _get_supported_prefixes(self) -> List[str]:
        return [SCHEME]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return fetch_named_weights(path, force=force)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> Union[IO[str], IO[bytes]]:
        self._check_kwargs(kwargs)
        if any(flag in mode for flag in "wax+"):
            raise ValueError(f"{path}: the named FishNet weights are read-only; mode={mode!r} writes")
        return open(self._get_local_path(path), mode, buffering=buffering)


PathManager.register_handler(FishNetWeightsHandler())
