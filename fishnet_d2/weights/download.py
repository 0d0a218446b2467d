"""Fetch published FishNet ImageNet weights once, check them, convert them, and keep them in a cache.

    path = fetch_weights(PUBLISHED_WEIGHTS["fishnet150_official"])  # a Detectron2 weights file

The first call downloads the published file (or its copy on ``$FISHNET_D2_MIRROR``), checks it
(:mod:`fishnet_d2.weights.zoo` says what is checked for each source), converts it with
:mod:`fishnet_d2.weights.convert` (every key and shape, no code run) and writes the converted file
atomically to ``<cache>/ImageNet/<name>.pth``; later calls return that file without any network
access. An entry an earlier version wrote in an older format
(:mod:`fishnet_d2.weights.imagenet_file`) is rewritten in the current one on its first use, from
its own tensors, without network access. ``<cache>`` is ``$FISHNET_D2_CACHE``, else ``fishnet_d2`` in iopath's cache directory
(``$FVCORE_CACHE``, else ``~/.torch/iopath_cache``).

Processes that fetch the same weights at once (the workers of a multi-GPU job, on one machine or
on a shared file system) take turns on a file lock beside the entry: one downloads, the others
wait and then read the finished file. A failure of any kind -- no connection, an HTTP error, a
dropped connection, a file that fails its check, a full disk, Ctrl-C -- raises one paragraph
saying what happened and the ways on, and leaves no cache entry and no temporary file.
"""

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import IO, Iterator, List, Optional

import portalocker
import torch
from iopath.common.file_io import get_cache_dir
from tqdm import tqdm

from ..modeling import FISHNET_VARIANTS
from ..version import __version__
from .atomic_file import atomic_write
from .convert import CheckpointLoadError, convert_state_dict, load_state_dict, save_d2_checkpoint
from .files import read_checkpoint
from .imagenet_file import WEIGHTS_FORMAT, file_format, is_converted_file, upgraded
from .zoo import PUBLISHED_WEIGHTS, SCHEME, UNPUBLISHED_WEIGHTS, PublishedWeights, weight_name

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "WeightsUnavailableError",
    "UnpublishedWeightsError",
    "cache_dir",
    "cached_path",
    "download_url",
    "fetch_weights",
    "fetch_named_weights",
]

CACHE_ENV = "FISHNET_D2_CACHE"
MIRROR_ENV = "FISHNET_D2_MIRROR"
_TIMEOUT_S = 60  # a connection silent for this long counts as dropped
_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """Named weights that could not be fetched, checked, converted or cached; nothing was cached."""


class UnpublishedWeightsError(WeightsUnavailableError):
    """A name for a network whose ImageNet weights no one publishes."""


def cache_dir() -> str:
    """``$FISHNET_D2_CACHE``, else ``fishnet_d2`` in iopath's cache directory."""
    configured = os.environ.get(CACHE_ENV)
    return os.path.expanduser(configured) if configured else os.path.join(get_cache_dir(), "fishnet_d2")


def cached_path(weights: PublishedWeights, cache: Optional[str] = None) -> str:
    """Where the converted weights are kept."""
    return os.path.join(cache or cache_dir(), "ImageNet", f"{weights.name}.pth")


def download_url(weights: PublishedWeights, mirror: Optional[str] = None) -> str:
    """The published URL, or, with a mirror (default ``$FISHNET_D2_MIRROR``), the published file
    name under the mirror's base URL."""
    mirror = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    return f"{mirror.rstrip('/')}/{weights.file_name}" if mirror else weights.url


def _ways_on(weights: PublishedWeights, url: str, cache: str) -> str:
    unzip = " (unzip it first)" if weights.archive_member else ""
    local = weights.archive_member or weights.file_name
    where = (
        f"the mirror ({MIRROR_ENV}) must serve the published file as {url}"
        if url != weights.url
        else f"without access to its host, set {MIRROR_ENV} to the base URL of a copy of the published "
        f"files (http://, https:// or file:///shared/dir) that has this one as {weights.file_name}"
    )
    return (
        f"Ways on: {where}; "
        f"or download {weights.url} yourself{unzip}, convert it with `python tools/convert_fishnet_to_d2.py "
        f"{local} {weights.name}.pth` and set MODEL.WEIGHTS to that file. Nothing was written to "
        f"the cache ({cache})."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _disk_error(
    weights: PublishedWeights, what: str, directory: str, error: BaseException, size: Optional[int]
) -> WeightsUnavailableError:
    """``what`` (``size`` bytes, when known) could not be written in ``directory``."""
    room = []
    if size:
        room.append(f"{size / 2**20:.0f} MB to write")
    with contextlib.suppress(OSError):
        room.append(f"{shutil.disk_usage(directory).free / 2**20:.0f} MB free there")
    room_text = f" ({'; '.join(room)})" if room else ""
    return WeightsUnavailableError(
        f"{SCHEME}{weights.name}: could not write {what} in {directory}: {_first_line(error)}"
        f"{room_text}. Free space there, or set {CACHE_ENV} to a writable directory with room. Nothing "
        "was written to the cache."
    )


@contextlib.contextmanager
def _exclusive(lock_file: IO, output: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (released when the process dies)."""
    try:
        portalocker.lock(lock_file, portalocker.LOCK_EX | portalocker.LOCK_NB)
    except portalocker.LockException:
        logger.info(f"Waiting for another process that is fetching {output}")
        portalocker.lock(lock_file, portalocker.LOCK_EX)
    try:
        yield
    finally:
        portalocker.unlock(lock_file)


def _remove_leftovers(weights: PublishedWeights, directory: str, lock_path: str) -> None:
    """Delete the temporary files of an earlier fetch of ``weights`` that was killed (under the
    lock, no other process is writing them)."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name.startswith(f".{weights.name}.") and path != lock_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _dropped(
    weights: PublishedWeights, url: str, received: int, total: Optional[int], why: str, cache: str
) -> WeightsUnavailableError:
    of = f" of {total:,}" if total is not None else ""
    return WeightsUnavailableError(
        f"{SCHEME}{weights.name}: the connection to {url} dropped after {received:,}{of} bytes{why}. Run "
        f"again to download it again. {_ways_on(weights, url, cache)}"
    )


def _download(weights: PublishedWeights, url: str, destination: str, cache: str) -> str:
    """Download ``url`` into ``destination`` (an open temporary file's name); its SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": f"fishnet_d2/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        reason = f"the server answered HTTP {e.code} {e.reason}"
        raise WeightsUnavailableError(
            f"{SCHEME}{weights.name}: could not download {url}: {reason}. {_ways_on(weights, url, cache)}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise WeightsUnavailableError(
            f"{SCHEME}{weights.name}: could not download {url}: no connection ({reason}). "
            + _ways_on(weights, url, cache)
        ) from None
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    digest = hashlib.sha256()
    received = 0
    logger.info(f"Downloading {url} to {cache}")
    with response, open(destination, "wb", buffering=0) as file, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=weights.file_name, disable=None, file=sys.stderr
    ) as progress:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (http.client.IncompleteRead, OSError, http.client.HTTPException) as e:
                raise _dropped(weights, url, received, total, f" ({_first_line(e)})", cache) from None
            if not chunk:
                break
            try:
                _write_all(file.fileno(), chunk)
            except OSError as e:
                raise _disk_error(weights, "the download", cache, e, total) from None
            digest.update(chunk)
            received += len(chunk)
            progress.update(len(chunk))
    if total is not None and received < total:
        raise _dropped(weights, url, received, total, "", cache)
    return digest.hexdigest()


def _not_the_weights(weights: PublishedWeights, url: str, reason: str, cache: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"{SCHEME}{weights.name}: the file from {url} is not {weights.description} "
        f"({weights.file_name}): {reason} The published file may have been replaced, or the mirror "
        f"serves another one under that name. {_ways_on(weights, url, cache)}"
    )


def _looks_like_a_web_page(path: str) -> bool:
    with open(path, "rb") as f:
        start = f.read(512).lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body"))


def _unpack(weights: PublishedWeights, url: str, archive: str, destination: str, cache: str) -> None:
    """Extract the archive's ``.pth`` into ``destination``, checking its SHA-1 as pytorchcv does."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = zipped.namelist()
            if weights.archive_member not in names:
                held = f"the zip archive holds {', '.join(names) or 'nothing'}, not {weights.archive_member}."
                raise _not_the_weights(weights, url, held, cache)
            digest = hashlib.sha1()
            with zipped.open(weights.archive_member) as member, open(destination, "wb", buffering=0) as out:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    try:
                        _write_all(out.fileno(), chunk)
                    except OSError as e:
                        size = zipped.getinfo(weights.archive_member).file_size
                        raise _disk_error(weights, "the unzipped file", cache, e, size) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise _not_the_weights(weights, url, f"not a readable zip archive ({_first_line(e)}).", cache) from None
    if not digest.hexdigest().startswith(weights.sha1_prefix):
        raise _not_the_weights(
            weights, url, f"its {weights.archive_member} has SHA-1 {digest.hexdigest()}, which does not begin "
            f"with the published {weights.sha1_prefix} (a damaged or altered file).", cache,
        )  # fmt: skip


def _convert(weights: PublishedWeights, url: str, path: str, output: str, source_sha256: str, cache: str) -> None:
    """Check the downloaded weights (every key and shape of the named variant) and write them converted."""
    try:
        converted = convert_state_dict(load_state_dict(path), layout=weights.layout)
    except CheckpointLoadError as e:
        raise _not_the_weights(weights, url, str(e).replace(path, weights.file_name), cache) from None
    expected = FISHNET_VARIANTS[weights.depth]
    if converted.arch != expected or converted.num_classes != 1000:
        found = converted.describe().split(";")[0]
        raise _not_the_weights(weights, url, f"it holds {found}, not FishNet-{weights.depth} (1000 classes).", cache)
    author = (
        f"fishnet_d2, {SCHEME}{weights.name}: converted from {weights.file_name} ({weights.layout} layout, "
        f"sha256 {source_sha256}) downloaded from {url}"
    )
    try:
        save_d2_checkpoint(converted.state_dict, output, author)
    except Exception as e:  # torch.save reports a full disk as OSError or RuntimeError
        size = sum(t.numel() * t.element_size() for t in converted.state_dict.values())
        raise _disk_error(weights, "the converted weights", os.path.dirname(output), e, size) from None


def _fetch(weights: PublishedWeights, url: str, output: str, cache: str) -> None:
    directory = os.path.dirname(output)
    temporary: List[str] = []

    def new_temporary(suffix: str) -> str:
        fd, name = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=suffix, dir=directory)
        os.close(fd)
        temporary.append(name)
        return name

    try:
        try:
            downloaded = new_temporary(".download")
        except OSError as e:
            raise _disk_error(weights, "a temporary file", directory, e, None) from None
        sha256 = _download(weights, url, downloaded, cache)
        if _looks_like_a_web_page(downloaded):
            reason = "the server sent a web page (the link may have expired or ask for a login)."
            raise _not_the_weights(weights, url, reason, cache)
        state_file = downloaded
        if weights.archive_member:
            state_file = new_temporary(".pth")
            _unpack(weights, url, downloaded, state_file, cache)
            os.unlink(downloaded)  # room for the converted file
        _convert(weights, url, state_file, output, sha256, cache)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"{SCHEME}{weights.name}: interrupted while fetching {url}; nothing was written to the cache ({cache})"
        ) from None
    finally:
        for name in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    logger.info(f"Converted {url} into {output}")


def _lock_path(output: str) -> str:
    """The lock file that fetching (or rewriting) the cache entry ``output`` holds."""
    return os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.lock")


def _in_an_older_format(entry: str) -> bool:
    """Whether the cache entry ``entry`` holds converted weights in an older format than
    WEIGHTS_FORMAT. Only the file's index is read (its tensors are memory-mapped, not read)."""
    try:
        content = torch.load(entry, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: left as it is, for the checkpointer to name the problem
        return False
    return isinstance(content, dict) and is_converted_file(content) and file_format(content) < WEIGHTS_FORMAT


def _rewrite_in_current_format(entry: str) -> None:
    """Rewrite the cache entry ``entry`` in the current format, from its own tensors, under the
    entry's lock. Where it cannot be rewritten (a read-only cache), it stays as it is, with a
    warning: it loads as before, with reports of the tensors a detector does not use."""
    try:
        with open(_lock_path(entry), "a") as lock_file, _exclusive(lock_file, entry):
            if not _in_an_older_format(entry):  # rewritten by another process meanwhile
                return
            content = upgraded(read_checkpoint(entry))
            atomic_write(entry, lambda f: torch.save(content, f))
    except (OSError, RuntimeError, CheckpointLoadError) as e:  # torch.save: a full disk is a RuntimeError
        logger.warning(
            f"{entry} is in the format of an earlier fishnet_d2 and could not be rewritten in the current "
            f"one ({_first_line(e)}): it is loaded as it is, and Detectron2's checkpointer lists its BatchNorm "
            "counters and ImageNet classifier as unused. Delete it to fetch it again."
        )
        return
    logger.info(f"Rewrote {entry} in the current format (format {WEIGHTS_FORMAT}; the same weights)")


def fetch_weights(
    weights: PublishedWeights, *, cache: Optional[str] = None, mirror: Optional[str] = None, force: bool = False
) -> str:
    """The local path of ``weights`` converted to Detectron2's format: the cache entry, made on
    first use (see the module docstring); an entry in an older format is rewritten in the
    current one. ``force`` fetches again over an existing entry.

    Raises:
        WeightsUnavailableError: the weights could not be fetched, checked or cached.
    """
    cache = cache or cache_dir()
    output = cached_path(weights, cache)
    if os.path.isfile(output) and not force:
        if _in_an_older_format(output):
            _rewrite_in_current_format(output)
        return output
    url = download_url(weights, mirror)
    directory = os.path.dirname(output)
    lock_path = _lock_path(output)
    try:
        os.makedirs(directory, exist_ok=True)
        lock_file = open(lock_path, "a")
    except OSError as e:
        raise _disk_error(weights, "the cache directory", cache, e, None) from None
    with lock_file, _exclusive(lock_file, output):
        if os.path.isfile(output) and not force:  # fetched by another process meanwhile
            return output
        _remove_leftovers(weights, directory, lock_path)
        _fetch(weights, url, output, cache)
    return output


def fetch_named_weights(path: str, *, force: bool = False) -> str:
    """:func:`fetch_weights` for ``fishnet://ImageNet/<name>``.

    Raises:
        UnpublishedWeightsError: the name of a network without published ImageNet weights.
        ValueError: an unknown name.
        WeightsUnavailableError: as :func:`fetch_weights`.
    """
    name = weight_name(path)
    if name in UNPUBLISHED_WEIGHTS:
        raise UnpublishedWeightsError(
            f"{path}: no ImageNet weights of {UNPUBLISHED_WEIGHTS[name]} are published, so this "
            "config has none to start from. Two ways on: set MODEL.WEIGHTS (LazyConfig: "
            "train.init_checkpoint) to ImageNet weights of this network of your own (converted with "
            "tools/convert_fishnet_to_d2.py), or train from scratch with MODEL.WEIGHTS \"\" and "
            "MODEL.FISHNET.NORM BN, SyncBN or GN (frozen BatchNorm cannot learn its statistics)."
        )
    if name not in PUBLISHED_WEIGHTS:
        raise ValueError(f"{path}: no FishNet weights of that name; published: {', '.join(PUBLISHED_WEIGHTS)}")
    return fetch_weights(PUBLISHED_WEIGHTS[name], force=force)
