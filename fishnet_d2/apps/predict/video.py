"""Videos for ``tools/predict.py``: frames read with OpenCV from a file or a camera, and the drawn
frames written to a video file that appears under its name only when complete."""

import os
import tempfile
from typing import Iterator, Optional

import cv2
import numpy as np

from ...weights.atomic_file import publish
from .images import InputError

__all__ = ["VIDEO_CODECS", "open_video", "open_camera", "read_frames", "AtomicVideoWriter"]

# Output container (by the file's suffix) -> the codec OpenCV's own FFmpeg writes it with.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def open_video(path: str) -> cv2.VideoCapture:
    """``path`` opened with OpenCV; InputError naming it when it is missing or OpenCV cannot open it."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or directory")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file")
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        video.release()
        raise InputError(
            f"{path}: OpenCV cannot open this video (not a video file, or in a format this OpenCV "
            "build cannot decode)"
        )
    return video


def open_camera(index: int = 0) -> cv2.VideoCapture:
    """Camera ``index`` opened with OpenCV; InputError when there is no such camera."""
    camera = cv2.VideoCapture(index)
    if not camera.isOpened():
        camera.release()
        raise InputError(
            f"--webcam: no camera: OpenCV could not open camera {index} (no camera is connected, "
            "or this process may not use it)"
        )
    return camera


def read_frames(video: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The frames of ``video``, (H, W, 3) uint8 BGR, until it ends (or a frame cannot be decoded)."""
    while True:
        ok, frame = video.read()
        if not ok:
            return
        yield frame


class AtomicVideoWriter:
    """Writes frames to a temporary video file beside ``path`` (same suffix, so OpenCV picks the
    same container); :meth:`commit` renames it to ``path``, :meth:`discard` deletes it. Used as a
    context manager, it commits when the block ends normally and discards when it raises."""

    def __init__(self, path: str, fps: float):
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in VIDEO_CODECS:
            raise ValueError(f"{path}: a video output must end in one of {sorted(VIDEO_CODECS)}")
        if not fps > 0:
            raise ValueError(f"fps={fps!r}: must be > 0")
        self.path = path
        self.fps = float(fps)
        self.codec = VIDEO_CODECS[suffix]
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self.temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=directory
        )
        os.close(fd)
        self._writer: Optional[cv2.VideoWriter] = None
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        """Append a (H, W, 3) uint8 BGR frame; every frame has the first frame's size."""
        height, width = frame_bgr.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(
                self.temporary, cv2.VideoWriter_fourcc(*self.codec), self.fps, (width, height), True
            )
            if not self._writer.isOpened():
                raise RuntimeError(f"{self.path}: OpenCV cannot write {self.codec} video here")
            self.size = (height, width)
        elif (height, width) != self.size:
            raise ValueError(
                f"a frame of {width}x{height}; the video's frames are {self.size[1]}x{self.size[0]}"
            )
        self._writer.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    def commit(self) -> None:
        """Finish the video and put it at ``path``."""
        if self._writer is None:
            raise RuntimeError(f"{self.path}: no frame was written; nothing to save")
        self._writer.release()
        self._writer = None
        publish(self.temporary, self.path)

    def discard(self) -> None:
        """Drop the temporary file; ``path`` keeps what it held before."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "AtomicVideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

