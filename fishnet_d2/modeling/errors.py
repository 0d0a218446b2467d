"""The error every FishNet module and record raises for a value it does not allow."""

from typing import Any, Callable, Dict, Optional

__all__ = ["InvalidValue"]


class _Names(Dict[str, str]):
    """``str.format_map`` mapping that names each argument ``{name}`` through ``key``."""

    def __init__(self, key: Callable[[str], str]):
        super().__init__()
        self.key = key

    def __missing__(self, name: str) -> str:
        return self.key(name)


class InvalidValue(ValueError):
    """``name=value: what is allowed``, for the argument ``name`` of a module or record.

    The message may name other arguments as ``{argument}``. The error keeps its parts, so that a
    config layer can say the same under its own keys (:meth:`message` with a ``key`` function)
    instead of editing the text.
    """

    def __init__(self, name: str, value: Any, allowed: str, *, index: Optional[int] = None):
        self.name = name
        self.value = value
        self.allowed = allowed
        self.index = index
        super().__init__(self.message())

    def message(self, key: Callable[[str], str] = str) -> str:
        """The message, each argument named by ``key(argument)``."""
        subscript = "" if self.index is None else f"[{self.index}]"
        return f"{key(self.name)}{subscript}={self.value!r}: {self.allowed.format_map(_Names(key))}"
