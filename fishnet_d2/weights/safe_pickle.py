"""Read a pickle that may come from anyone without running its code: only plain data and numpy
arrays are rebuilt, which is all a Detectron2 model-zoo ``.pkl`` holds.

A pickle names the functions and classes it calls while it is read ("globals"); Python's
``pickle.load`` imports and calls any of them, so a pickle can run any code. ``load_pickle``
imports only those in :data:`ALLOWED_GLOBALS` and raises :class:`ForbiddenGlobalError` at the first
other one, before anything calls it.
"""

import importlib
import pickle
from typing import Any, BinaryIO, Callable, Dict, Tuple

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "ForbiddenGlobalError", "load_pickle"]

# (module, name) of every global a pickle may name: containers, and what numpy's arrays, dtypes
# and scalars pickle to with protocols 0-5 (numpy >= 2 moved numpy.core to numpy._core).
ALLOWED_GLOBALS: Tuple[Tuple[str, str], ...] = (
    ("collections", "OrderedDict"),
    ("builtins", "bytes"),  # empty bytes with protocols < 3
    ("builtins", "bytearray"),
    ("builtins", "set"),  # sets with protocols < 4
    ("builtins", "frozenset"),
    ("_codecs", "encode"),  # bytes with protocols < 3 (array data): str -> bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle names a global that :data:`ALLOWED_GLOBALS` does not list."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        super().__init__(f"{module}.{name}")


def _import(module: str, name: str) -> Any:
    if module.startswith("numpy._core") and int(np.__version__.split(".")[0]) < 2:
        module = "numpy.core" + module[len("numpy._core") :]  # written by numpy >= 2
    return getattr(importlib.import_module(module), name)


_RESOLVED: Dict[Tuple[str, str], Callable[[], Any]] = {
    key: (lambda key=key: _import(*key)) for key in ALLOWED_GLOBALS
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # With fix_imports (the default), Python 2 names are already mapped to Python 3 ones.
        if (module, name) not in _RESOLVED:
            raise ForbiddenGlobalError(module, name)
        return _RESOLVED[(module, name)]()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(
            f"persistent id {pid!r}: this pickle refers to external objects (a torch checkpoint's "
            "data.pkl does); plain pickles have none"
        )


def load_pickle(file: BinaryIO, *, encoding: str = "latin1") -> Any:
    """``pickle.load(file, encoding=encoding)``, rebuilding only dicts, lists, tuples, sets,
    strings, bytes, numbers, booleans, None, ``collections.OrderedDict`` and numpy arrays, dtypes
    and scalars. ``encoding="latin1"`` reads the byte strings of Python 2 pickles (Detectron1 and
    Caffe2 model-zoo files), as Detectron2 does.

    Raises:
        ForbiddenGlobalError: the pickle names another function or class (nothing was called).
        pickle.UnpicklingError, EOFError, ...: whatever ``pickle`` raises for broken data.
    """
    return _RestrictedUnpickler(file, encoding=encoding).load()
