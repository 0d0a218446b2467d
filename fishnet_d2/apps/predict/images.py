"""The images of ``tools/predict.py``: ``--input`` arguments expanded into files, and each file read
as an image the model takes."""

import glob
import os
import warnings
from typing import List, Sequence, Tuple

import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["InputError", "expand_inputs", "read_image_file"]

# Pillow's modes of 16-bit (and 32-bit integer) single-channel images, whose values go to 65535;
# Pillow's own conversion to 8 bits clips them at 255 instead of scaling them.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class InputError(Exception):
    """An input that cannot be predicted; the message names it and says why."""


def _is_pattern(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand_inputs(arguments: Sequence[str]) -> Tuple[List[str], List[InputError]]:
    """The files ``--input`` names, in order, each once, and an error for each argument that
    names none.

    Each argument is a file; a directory (the files directly in it, sorted, hidden files and
    subdirectories left out); or a glob pattern (``dir/*.jpg``; the files it matches, sorted).
    ``~`` is expanded. Files are not opened here: :func:`read_image_file` tells which are images.
    """
    files: List[str] = []
    errors: List[InputError] = []
    seen = set()
    for argument in arguments:
        path = os.path.expanduser(argument)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if not name.startswith(".") and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                errors.append(
                    InputError(
                        f"{argument}: the directory holds no files to predict (its hidden files and "
                        "subdirectories are not read)"
                    )
                )
        elif os.path.isfile(path):
            found = [path]
        elif os.path.exists(path):
            found = []
            errors.append(InputError(f"{argument}: not a regular file or a directory"))
        elif _is_pattern(path):
            found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not found:
                errors.append(InputError(f"{argument}: no file matches this pattern"))
        else:
            found = []
            errors.append(InputError(f"{argument}: no such file or directory"))
        for file in found:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, errors


def read_image_file(path: str, format: str) -> np.ndarray:
    """The image in ``path`` as an (H, W, C) uint8 array in ``format`` (``cfg.INPUT.FORMAT``).

    As Detectron2's ``read_image`` (Pillow, EXIF orientation applied, Pillow's conversion of
    every mode: grayscale and palette images become three channels, RGBA / LA lose their alpha
    channel as in Detectron2's training and evaluation), except that 16-bit (and 32-bit integer)
    grayscale images are scaled to 8 bits (value / 257, so 65535 becomes 255) rather than
    clipped at 255. Pillow itself reads 16-bit RGB PNGs as 8-bit.

    Raises:
        InputError: naming ``path``: not an image, a corrupt or truncated one, a floating-point
            image, or one over Pillow's decompression-bomb limit (twice
            ``PIL.Image.MAX_IMAGE_PIXELS``, 178,956,970 pixels by default).
    """
    try:
        with warnings.catch_warnings():
            # Images up to twice Pillow's limit are read; larger ones raise DecompressionBombError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: refused, too large: {e} (Pillow's guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (Pillow recognises no image format in it)") from None
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, EOFError...
        raise InputError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from None
    if image.mode in _WIDE_INTEGER_MODES:
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        raise InputError(
            f"{path}: a 32-bit floating-point image (Pillow mode F), whose value range is unknown; "
            "allowed: 8- or 16-bit images (save it as one)"
        )
    return np.ascontiguousarray(convert_PIL_to_numpy(image, format))
