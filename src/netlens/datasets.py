"""Readers for the example experiments' data: CIFAR-10 and MNIST, from their official files.

Both are ``torch.utils.data.Dataset`` s in torchvision's shape (``dataset[i]`` is an
``(image, label)`` pair; ``len``, ``.classes``, ``.data``, ``.targets``), with no torchvision and
no Pillow. Each split is read and preprocessed once, at construction, into one float tensor
(``.data``), so that a ``DataLoader`` only indexes it.

The files are untrusted input. CIFAR-10 batches are pickles, read by an unpickler that admits
only what the official batches need (numpy arrays of integers and plain data); archive members
with absolute paths, ``..`` or links are refused; truncated or corrupt files raise an error that
names the file. Every size a file declares (an archive member, an IDX header, a buffer inside a
pickle) is checked against what the official format allows before anything is read or inflated,
and nothing is read past it, so a small crafted file cannot exhaust memory. A file that cannot
be read for lack of permission says so. ``download=True`` fetches the official files, checks their
published MD5 and renames a partial file into place only when it is complete and on disk, so an
interrupted download never leaves a file that looks finished.

Importing this module is not part of ``import netlens``: ``import netlens.datasets`` when needed.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import pickle
import secrets
import struct
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._core.checks import as_int, check_bool
from ._core.errors import NetlensError, NetlensTypeError, NetlensValueError, describe

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "MNIST",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "DatasetNotFoundError",
    "DatasetPermissionError",
    "DownloadError",
]

#: The official CIFAR-10 "python version" archive (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: Its published MD5.
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
#: Base URLs tried in turn for the MNIST files: the official site, then the mirror torchvision
#: uses (the official site often refuses scripted downloads). The MD5s decide what is accepted.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
#: The published MD5 of each official (gzipped) MNIST file.
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: Mean of the MNIST training pixels in [0, 1], for ``standardize=True``.
MNIST_MEAN = 0.1307
#: Standard deviation of the MNIST training pixels in [0, 1], for ``standardize=True``.
MNIST_STD = 0.3081

# Seconds without progress before a download gives up, and seconds for a whole download (the
# 170 MB CIFAR-10 archive at 100 kB/s takes half of it), so that a server that trickles cannot
# hold a run forever.
_DOWNLOAD_TIMEOUT = 60.0
_DOWNLOAD_DEADLINE = 3600.0
_CHUNK = 1 << 20

_CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR10_FOLDER = "cifar-10-batches-py"
#: CIFAR-10's class names, in label order.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_CIFAR10_SIDE = 32
# ITU-R BT.601 luma weights for R, G, B (what PIL's convert("L") uses).
_LUMA = (0.299, 0.587, 0.114)
# Images converted per step, to bound the float32 working memory (about 40 MB for RGB).
_CONVERT_BLOCK = 4096

_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_CLASSES = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
]
_IDX_UBYTE = 0x08

# What the official formats allow, checked before a file is read or inflated. A CIFAR-10 batch
# holds at most 10,000 images of 3,072 bytes; pickled by Python 3 at protocol 2 each pixel byte
# above 127 takes two bytes of UTF-8, and the labels and file names take well under 4 MiB.
_CIFAR10_BATCH_IMAGES = 10_000
_CIFAR10_BATCH_MAX_BYTES = 2 * _CIFAR10_BATCH_IMAGES * 3 * _CIFAR10_SIDE**2 + (4 << 20)
# Pickle opcodes in one batch: an official one has about 30,000 (one or two per label and per
# file name); each opcode makes at most one small object, so this bounds their memory.
_PICKLE_MAX_OPCODES = 200_000
# Reads from a CIFAR-10 archive (about two per member; the official one has 8 members) and bytes
# inflated from it in all (the official archive inflates to 187 MB).
_ARCHIVE_MAX_READS = 10_000
_ARCHIVE_MAX_BYTES = 8 * _CIFAR10_BATCH_MAX_BYTES
# Items in one MNIST-format IDX file: MNIST has 60,000 training digits, EMNIST Digits (the largest
# set of 28x28 digits in this format) 240,000.
_IDX_MAX_ITEMS = 250_000


class DatasetNotFoundError(NetlensError, FileNotFoundError):
    """The data set's files are not in ``root`` (and ``download`` was not asked for)."""


class DatasetPermissionError(NetlensError, PermissionError):
    """A data file or folder cannot be read (or, to download into it, written): no permission."""


class DownloadError(NetlensError, OSError):
    """A download failed: no network, an HTTP error, a dropped connection or a wrong checksum.

    Nothing is left behind: the partial file is removed and no final file is written.
    """


class _LocalDownloadError(DownloadError):
    """A download failed on this machine (a folder, a full disk), so another mirror would too."""


class _ImageDataset(Dataset[tuple[Any, Any]]):
    """What both readers share: ``.data`` / ``.targets`` tensors, transforms and ``repr``."""

    classes: list[str]

    def __init__(
        self,
        root: Path,
        train: bool,
        data: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], Any] | None,
        target_transform: Callable[[int], Any] | None,
    ) -> None:
        self.root = root
        self.train = train
        self.data = data
        self.targets = targets
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Return ``(image, label)``, each through its transform when one was given."""
        image: Any = self._image(index)
        target: Any = int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def _image(self, index: int) -> torch.Tensor:
        return self.data[index]

    def __repr__(self) -> str:
        lines = [
            f"Dataset {type(self).__name__}",
            f"    Number of datapoints: {len(self)}",
            f"    Root location: {self.root}",
            f"    Split: {'Train' if self.train else 'Test'}",
            f"    Images: {tuple(self._image(0).shape) if len(self) else ()} {self.data.dtype}",
        ]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)


class CIFAR10(_ImageDataset):
    """CIFAR-10 from the official "python version" files, grey 28x28 in [-1, 1] by default.

    Reads ``root/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5`` for ``train=True``,
    ``test_batch`` otherwise) or, when that folder is incomplete, the archive
    ``root/cifar-10-python.tar.gz`` directly (it is not extracted). Each split is preprocessed
    once, at construction, in float32:

    1. ``grey=True``: one channel, the ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of the
       0..255 pixels (the weights of PIL's ``convert("L")``, without its rounding to integers).
    2. ``size`` other than 32: resized to ``size x size`` by bilinear interpolation with
       antialiasing (``F.interpolate(..., mode="bilinear", antialias=True)``: a triangle filter
       widened by the scale factor, as in PIL's bilinear ``resize``).
    3. ``value / 127.5 - 1``, so 0 maps to -1 and 255 to 1 (torchvision's ``ToTensor()`` then
       ``Normalize(0.5, 0.5)``), clamped to [-1, 1] against rounding.

    The result is ``.data``, a float32 tensor of shape ``(N, C, size, size)`` (``C`` is 1 for
    grey, 3 for RGB); ``.targets`` is an int64 tensor of the labels 0..9, named by ``.classes``.
    ``dataset[i]`` is ``(data[i], int(targets[i]))``, each through its transform if given.

    The batches are pickles: they are read by an unpickler that admits only what the official
    batches need (numpy arrays of integers, lists, dicts, strings and numbers), so a crafted file
    cannot run code; it is refused with a :class:`~netlens.NetlensValueError`, as is an archive
    member with an absolute path, ``..`` or a link, and a truncated or corrupt file (the message
    names the file). Sizes are checked before reading: a batch file or archive member may hold at
    most 65,634,304 bytes (10,000 images of 3,072 bytes, which a Python 3 pickle may store in twice
    that, plus 4 MiB for labels and names) and at most 10,000 images, and a pickle may not ask
    for more memory than that in all, so a small crafted file cannot exhaust memory.

    Args:
        root: The folder that holds ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``.
        train: The 50,000 training images if ``True``, else the 10,000 test images.
        download: If the data is not in ``root``, fetch the official archive
            (:data:`CIFAR10_URL`) into it and check its MD5 (:data:`CIFAR10_MD5`). Data already
            there is used as it is. The arguments after ``train`` are keyword-only: their
            order differs from torchvision's.
        grey: Convert to one luma channel; ``False`` keeps RGB.
        size: Side of the square output images; ``None`` keeps 32.
        transform: Called on each image tensor in ``__getitem__`` (for augmentation).
        target_transform: Called on each integer label in ``__getitem__``.

    Raises:
        DatasetNotFoundError: The files are not in ``root`` and ``download`` is ``False``, or
            ``root`` is a file.
        DatasetPermissionError: A file or folder cannot be read, or written to download into it.
        DownloadError: The download failed; nothing is left behind.
        NetlensValueError: A file is corrupt, truncated, unsafe, too large or not in the official
            format, or ``size`` is below 1.
        NetlensTypeError: An argument of the wrong type (``root``, a flag that is not a bool,
            a ``size`` that is not an int or None, a transform that is not callable).

    Example:
        A test split of two white images, written in the official layout:

        >>> import pickle, tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from netlens.datasets import CIFAR10
        >>> batch = {b"data": np.full((2, 3072), 255, np.uint8), b"labels": [3, 8]}
        >>> with tempfile.TemporaryDirectory() as root:
        ...     folder = Path(root, "cifar-10-batches-py")
        ...     folder.mkdir()
        ...     _ = (folder / "test_batch").write_bytes(pickle.dumps(batch))
        ...     test_set = CIFAR10(root, train=False)
        >>> image, label = test_set[1]
        >>> image.shape, test_set.classes[label]
        (torch.Size([1, 28, 28]), 'ship')
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        *,
        download: bool = False,
        grey: bool = True,
        size: int | None = 28,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        train = check_bool("train", train)
        download = check_bool("download", download)
        grey = check_bool("grey", grey)
        folder = _check_root(root)
        _check_transforms(transform, target_transform)
        side = _check_size(size)
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        if download:
            _remove_stale_partials(folder, _CIFAR10_ARCHIVE)
            if _cifar_source(folder, names) is None:
                _download(CIFAR10_URL, folder / _CIFAR10_ARCHIVE, CIFAR10_MD5)
        source = _cifar_source(folder, names)
        if source is None:
            raise _cifar_not_found(folder, names)
        batches = (
            _read_cifar_archive(source, names)
            if source.is_file()
            else _read_cifar_folder(source, names)
        )
        pixels = [pixel_block for pixel_block, _ in batches]
        targets = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
        images = _cifar_images(pixels, grey=grey, size=side)
        super().__init__(folder, train, images, targets, transform, target_transform)
        self.classes = list(CIFAR10_CLASSES)


class MNIST(_ImageDataset):
    """MNIST from the four official IDX files in ``root``, gzipped or not.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``train=True``) or the
    ``t10k-`` pair, each plain or with ``.gz`` added. The headers are checked before the rest is
    read or inflated: the magic number (unsigned bytes, 3 dimensions for images, 1 for labels),
    28x28 images, as many labels as images and at most 250,000 of them (MNIST has 60,000, EMNIST
    Digits 240,000); then labels 0..9 and a file length that matches, reading no more than the
    header announces plus one byte. Any mismatch names the file.

    ``.data`` is a float32 tensor of shape ``(N, 28, 28)`` with the pixels divided by 255, so in
    [0, 1]; with ``standardize=True`` it is ``(pixels / 255 - 0.1307) / 0.3081`` instead
    (:data:`MNIST_MEAN`, :data:`MNIST_STD`: mean 0 and standard deviation 1 over the training
    set), computed once for the whole split. ``.targets`` is an int64 tensor of the digits.
    ``dataset[i]`` is ``(data[i][None], int(targets[i]))``: a ``(1, 28, 28)`` image, which both
    a CNN and :class:`netlens.models.RowClassifier` accept, each through its transform if given.

    Args:
        root: The folder that holds the IDX files.
        train: The 60,000 training digits if ``True``, else the 10,000 test digits.
        download: Fetch the split's two files that are missing from ``root`` (gzipped, from
            :data:`MNIST_MIRRORS` in turn), checking each against :data:`MNIST_MD5`. Files
            already there are used as they are. The arguments after ``train`` are keyword-only.
        standardize: Subtract :data:`MNIST_MEAN` and divide by :data:`MNIST_STD`.
        transform: Called on each ``(1, 28, 28)`` image tensor in ``__getitem__``.
        target_transform: Called on each integer label in ``__getitem__``.

    Raises:
        DatasetNotFoundError: A file is not in ``root`` and ``download`` is ``False``, or ``root``
            is a file.
        DatasetPermissionError: A file or folder cannot be read, or written to download into it.
        DownloadError: The download failed; nothing is left behind.
        NetlensValueError: A file is corrupt, truncated, too large or not in the IDX format.

    Example:
        A test split of two white digits, written as gzipped IDX files:

        >>> import gzip, tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from netlens.datasets import MNIST
        >>> def idx(array):  # magic number (type 8: bytes, number of dims), sizes, bytes
        ...     header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
        ...     return gzip.compress(header + array.astype(np.uint8).tobytes())
        >>> with tempfile.TemporaryDirectory() as root:
        ...     images = idx(np.full((2, 28, 28), 255))
        ...     _ = Path(root, "t10k-images-idx3-ubyte.gz").write_bytes(images)
        ...     _ = Path(root, "t10k-labels-idx1-ubyte.gz").write_bytes(idx(np.array([3, 7])))
        ...     test_set = MNIST(root, train=False)
        >>> image, label = test_set[1]
        >>> image.shape, image.max().item(), label
        (torch.Size([1, 28, 28]), 1.0, 7)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        *,
        download: bool = False,
        standardize: bool = False,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        train = check_bool("train", train)
        download = check_bool("download", download)
        standardize = check_bool("standardize", standardize)
        folder = _check_root(root)
        _check_transforms(transform, target_transform)
        names = _MNIST_FILES[train]
        if download:
            for name in names:
                _remove_stale_partials(folder, name + ".gz")
                if _idx_path(folder, name) is None:
                    _download_from_mirrors(name + ".gz", folder, MNIST_MD5[name + ".gz"])
        paths = []
        for name in names:
            path = _idx_path(folder, name)
            if path is None:
                raise DatasetNotFoundError(
                    f"Expected the MNIST file {name} (or {name}.gz) in {folder}, but it is not "
                    f"there. Pass download=True to fetch it, or put the official files there."
                )
            paths.append(path)
        with _IdxFile(paths[0], ndim=3) as image_file, _IdxFile(paths[1], ndim=1) as label_file:
            count = image_file.shape[0]
            if image_file.shape[1:] != (28, 28):
                raise NetlensValueError(
                    f"Expected 28x28 images in {paths[0]}, but its header says "
                    f"{image_file.shape[1]}x{image_file.shape[2]}. Is it an MNIST image file?"
                )
            if count > _IDX_MAX_ITEMS:
                raise NetlensValueError(
                    f"Expected at most {_IDX_MAX_ITEMS:,} images in {paths[0]} (MNIST has 60,000), "
                    f"but its header says {count:,}; refused to read it. {_hint(paths[0])}"
                )
            if label_file.shape[0] != count:
                raise NetlensValueError(
                    f"Expected as many labels in {paths[1]} as images in {paths[0]} ({count}), "
                    f"but got {label_file.shape[0]}. The files belong to different splits or data "
                    f"sets."
                )
            images = image_file.read()
            labels = label_file.read()
        if labels.size and labels.max() > 9:
            raise NetlensValueError(
                f"Expected digit labels 0..9 in {paths[1]}, but got {int(labels.max())}."
            )
        data = torch.from_numpy(images.astype(np.float32)).div_(255)
        if standardize:
            data.sub_(MNIST_MEAN).div_(MNIST_STD)
        targets = torch.from_numpy(labels.astype(np.int64))
        super().__init__(folder, train, data, targets, transform, target_transform)
        self.standardize = standardize
        self.classes = list(_MNIST_CLASSES)

    def _image(self, index: int) -> torch.Tensor:
        return self.data[index].unsqueeze(0)


# Argument checks -------------------------------------------------------------------------------


def _check_root(root: object) -> Path:
    if not isinstance(root, str | os.PathLike):
        raise NetlensTypeError(f"Expected root to be a str or os.PathLike, but got {root!r}.")
    folder = Path(os.fspath(root)).expanduser()
    try:
        is_file = folder.exists() and not folder.is_dir()
    except PermissionError as error:
        raise _permission_error(folder, error) from error
    if is_file:
        raise DatasetNotFoundError(
            f"Expected root to be a folder that holds the data (or where it may be downloaded), "
            f"but {folder} is a file."
        )
    return folder


def _check_size(size: object) -> int:
    """The side of CIFAR-10's output images: ``size``, or 32 for None."""
    if size is None:
        return _CIFAR10_SIDE
    side = as_int(size)
    if side is None:
        raise NetlensTypeError(f"Expected size to be an int or None, but got {describe(size)}.")
    if side < 1:
        raise NetlensValueError(f"Expected size to be a positive int or None, but got {side}.")
    return side


def _check_transforms(*transforms: object) -> None:
    for name, transform in zip(("transform", "target_transform"), transforms, strict=True):
        if transform is not None and not callable(transform):
            raise NetlensTypeError(
                f"Expected {name} to be a callable or None, but got {transform!r}."
            )


def _hint(file: object) -> str:
    return (
        f"Delete {file} and download the data again (download=True), or copy the official "
        "files afresh."
    )


# Reading files ---------------------------------------------------------------------------------


def _permission_error(path: Path, error: OSError) -> DatasetPermissionError:
    return DatasetPermissionError(
        f"Expected to read {path}, but permission is denied ({error.strerror or error}); the "
        f"file itself may be fine. Give this user the right to read it (ls -l {path}; chmod or "
        f"chown), or copy the data somewhere readable."
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a folder that cannot be searched says so instead of "missing"."""
    try:
        return path.is_file()
    except PermissionError as error:
        raise _permission_error(path, error) from error


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except PermissionError as error:
        raise _permission_error(path, error) from error


class _Source(Protocol):
    """What the readers need of a file object: plain and gzipped files, archive members."""

    def read(self, size: int = ..., /) -> bytes: ...

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def tell(self) -> int: ...

    def close(self) -> None: ...


def _read_at_most(stream: _Source, limit: int, source: object, what: str) -> bytes:
    """Read ``stream`` to its end, refusing it (after ``limit + 1`` bytes) when it is longer."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise NetlensValueError(
            f"Expected {what} of at most {limit:,} bytes in {source}, but it holds more; refused "
            f"to read it (a crafted or damaged file). {_hint(source)}"
        )
    return data


# CIFAR-10 --------------------------------------------------------------------------------------


def _cifar_source(folder: Path, names: Sequence[str]) -> Path | None:
    """The batch folder if it has every batch needed, else the archive if present, else None."""
    batches = folder / _CIFAR10_FOLDER
    if all(_is_file(batches / name) for name in names):
        return batches
    archive = folder / _CIFAR10_ARCHIVE
    return archive if _is_file(archive) else None


def _cifar_not_found(folder: Path, names: Sequence[str]) -> DatasetNotFoundError:
    batches = folder / _CIFAR10_FOLDER
    if batches.is_dir():
        missing = ", ".join(name for name in names if not _is_file(batches / name))
        found = f"{batches} lacks {missing} and there is no {_CIFAR10_ARCHIVE}"
    else:
        found = f"found neither {_CIFAR10_FOLDER}/ nor {_CIFAR10_ARCHIVE}"
    hint = ""
    if folder.name == _CIFAR10_FOLDER:
        hint = f" root should be the folder above {_CIFAR10_FOLDER}/: {folder.parent}."
    return DatasetNotFoundError(
        f"Expected CIFAR-10 in {folder}, but {found}.{hint} Pass download=True to fetch "
        f"{CIFAR10_URL}, or put the official files there."
    )


def _read_cifar_folder(folder: Path, names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_read_cifar_file(folder / name) for name in names]


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with _open_for_reading(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > _CIFAR10_BATCH_MAX_BYTES:
            raise NetlensValueError(
                f"Expected a CIFAR-10 batch of at most {_CIFAR10_BATCH_MAX_BYTES:,} bytes in "
                f"{path}, but the file has {size:,}; refused to read it. {_hint(path)}"
            )
        data = _read_at_most(stream, _CIFAR10_BATCH_MAX_BYTES, path, "a CIFAR-10 batch")
    return _parse_cifar_batch(data, str(path))


class _ArchiveReader:
    """The inflated bytes of an archive, for ``tarfile``, with bounds on what it may ask for.

    ``tarfile`` reads a member's header and then whatever size the header declares (long names,
    pax headers, sparse maps) before the caller sees the member; here no single read may exceed
    what one batch may hold, reads are counted, and so are the bytes inflated in all.
    """

    def __init__(self, inflated: _Source, archive: Path) -> None:
        self.inflated = inflated
        self.archive = archive
        self.reads = 0
        self.consumed = 0

    def _refuse(self, problem: str) -> NetlensValueError:
        return NetlensValueError(
            f"Expected the CIFAR-10 archive in {self.archive}, but it {problem}; refused to read "
            f"on (a crafted or damaged archive). {_hint(self.archive)}"
        )

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > _CIFAR10_BATCH_MAX_BYTES + 1:
            raise self._refuse(
                f"asks for a block of {'all its' if size is None or size < 0 else f'{size:,}'} "
                f"bytes, more than a batch may hold ({_CIFAR10_BATCH_MAX_BYTES:,})"
            )
        self.reads += 1
        if self.reads > _ARCHIVE_MAX_READS:
            raise self._refuse(f"needs more than {_ARCHIVE_MAX_READS:,} reads (too many members)")
        data = self.inflated.read(size)
        self._count(len(data))
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        before = self.inflated.tell()
        position = self.inflated.seek(offset, whence)
        self._count(max(0, position - before))
        return position

    def tell(self) -> int:
        return self.inflated.tell()

    def _count(self, size: int) -> None:
        self.consumed += size
        if self.consumed > _ARCHIVE_MAX_BYTES:
            raise self._refuse(f"inflates to more than {_ARCHIVE_MAX_BYTES:,} bytes")


def _read_cifar_archive(archive: Path, names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the wanted batches in one pass; refuse unsafe or oversized members on the way."""
    wanted = {f"{_CIFAR10_FOLDER}/{name}": name for name in names}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with _open_for_reading(archive) as compressed:
        try:
            inflated = gzip.GzipFile(fileobj=compressed, mode="rb")
            reader: Any = _ArchiveReader(inflated, archive)  # a file object as tarfile uses it
            with (
                inflated,
                tarfile.open(fileobj=reader, mode="r:") as tar,
            ):
                for member in tar:
                    _check_member(member, archive)
                    name = member.name
                    while name.startswith("./"):  # archives made with `tar czf x.tar.gz ./...`
                        name = name[2:]
                    if name not in wanted or not member.isfile():
                        continue
                    source = f"{member.name} in {archive}"
                    if member.size > _CIFAR10_BATCH_MAX_BYTES:
                        raise NetlensValueError(
                            f"Expected a CIFAR-10 batch of at most {_CIFAR10_BATCH_MAX_BYTES:,} "
                            f"bytes in {source}, but the member declares {member.size:,}; "
                            f"refused to read it (a crafted or damaged archive). {_hint(archive)}"
                        )
                    stream = tar.extractfile(member)
                    if stream is None:  # pragma: no cover - isfile() members always have data
                        continue
                    with stream:
                        data = _read_at_most(
                            stream, _CIFAR10_BATCH_MAX_BYTES, source, "a CIFAR-10 batch"
                        )
                    found[wanted[name]] = _parse_cifar_batch(data, source)
                    del data  # before the next member is read
        except NetlensError:
            raise
        except PermissionError as error:
            raise _permission_error(archive, error) from error
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise NetlensValueError(
                f"Expected a gzipped tar archive in {archive}, but it is corrupt or truncated "
                f"({type(error).__name__}: {error}). {_hint(archive)}"
            ) from error
    missing = [f"{_CIFAR10_FOLDER}/{name}" for name in names if name not in found]
    if missing:
        raise NetlensValueError(
            f"Expected {', '.join(missing)} in {archive}, but the archive does not hold them. "
            f"Is it the CIFAR-10 python version ({CIFAR10_URL})? {_hint(archive)}"
        )
    return [found[name] for name in names]


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could point outside the archive's folder or at other files."""
    name = member.name
    problem = None
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        problem = "an absolute path"
    elif ".." in name.replace("\\", "/").split("/"):
        problem = "a path that goes up with '..'"
    elif member.issym() or member.islnk():
        problem = f"a link to {member.linkname!r}"
    elif not (member.isfile() or member.isdir()):
        problem = "a special file (device, FIFO...)"
    if problem is not None:
        raise NetlensValueError(
            f"Expected only plain files and folders with relative paths in {archive}, but member "
            f"{name!r} is {problem}; refused to read the archive. It is not the official "
            f"CIFAR-10 archive: delete it and download {CIFAR10_URL} again."
        )


# CIFAR-10 batches: a restricted unpickler ------------------------------------------------------

# The opcodes that pickled dicts, lists, strings, numbers and numpy arrays need (protocols 0 to 5;
# the official batches are protocol 2). Not admitted: sets, extension codes, persistent ids,
# out-of-band buffers and the ones that instantiate classes (INST, OBJ, NEWOBJ).
_PICKLE_OPCODES = frozenset(
    code[0]
    for code in (
        pickle.PROTO, pickle.FRAME, pickle.STOP, pickle.MARK, pickle.POP, pickle.POP_MARK,
        pickle.DUP, pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.INT, pickle.BININT,
        pickle.BININT1, pickle.BININT2, pickle.LONG, pickle.LONG1, pickle.LONG4, pickle.FLOAT,
        pickle.BINFLOAT, pickle.STRING, pickle.BINSTRING, pickle.SHORT_BINSTRING,
        pickle.UNICODE, pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8,
        pickle.BINBYTES, pickle.SHORT_BINBYTES, pickle.BINBYTES8, pickle.BYTEARRAY8,
        pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3,
        pickle.EMPTY_LIST, pickle.LIST, pickle.APPEND, pickle.APPENDS, pickle.EMPTY_DICT,
        pickle.DICT, pickle.SETITEM, pickle.SETITEMS, pickle.GET, pickle.BINGET,
        pickle.LONG_BINGET, pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE,
        pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.REDUCE, pickle.BUILD,
    )
)  # fmt: skip
# Element types of the arrays a batch may hold: uint8 pixels and integer labels.
_PICKLE_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
# Arrays in one batch: the pixels, and the labels if they are an array rather than a list.
_PICKLE_MAX_ARRAYS = 4


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: passed to ``_reconstruct``, never called."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


class _DataOnlyUnpickler(pickle._Unpickler):
    """Admit only what the official CIFAR-10 batches need; refuse anything else, and bound memory.

    It is the pure-Python unpickler (whose memo is a dict, where the C one allocates an array as
    large as the largest memo index a file names) with its opcodes restricted to plain data, the
    callables restricted to numpy's array and dtype reconstructors and ``_codecs.encode`` (each
    checking its arguments), at most :data:`_PICKLE_MAX_OPCODES` opcodes, and the bytes that
    the callables and ``BUILD`` produce counted against the largest batch. The input is in memory
    and already bounded, so no opcode can read more than the file holds.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]]
    # What the base class sets up in load(), for the checked opcodes below.
    stack: list[Any]
    memo: dict[int, Any]
    read: Callable[[int], bytes]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, data: bytes, source: str) -> None:
        # latin1 reads the Python 2 strings of the official batches (numpy needs str there).
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.source = source
        self.opcodes = 0
        self.budget = _CIFAR10_BATCH_MAX_BYTES
        self.arrays = 0
        self.unfilled: dict[int, np.ndarray] = {}  # arrays from _reconstruct awaiting BUILD

    def close(self) -> None:
        """Drop the memo and the stack, which may hold the batch's large strings.

        They also hold bound methods of ``self``: a cycle that only the garbage collector would
        break, keeping every batch read so far in memory until it runs.
        """
        self.memo.clear()
        self.stack = []
        self.unfilled.clear()

    def refused(self, problem: str) -> NetlensValueError:
        return NetlensValueError(
            f"Expected a CIFAR-10 batch holding only numpy arrays and plain data in "
            f"{self.source}, but the pickle {problem}; refused to load it. The file is not a "
            f"genuine CIFAR-10 batch: delete it and download the official archive ({CIFAR10_URL})."
        )

    def spend(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise self.refused(
                f"asks for more than {_CIFAR10_BATCH_MAX_BYTES:,} bytes of arrays and strings, "
                f"more than any batch holds"
            )

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): self.make_dtype,
            ("_codecs", "encode"): self.encode,
        }
        for package in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 names
            allowed[(f"{package}.multiarray", "_reconstruct")] = self.reconstruct
            allowed[(f"{package}.multiarray", "scalar")] = self.scalar
            allowed[(f"{package}.numeric", "_frombuffer")] = self.frombuffer
        found = allowed.get((module, name))
        if found is None:
            raise self.refused(f"asks for {module}.{name}, which could run code")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise self.refused("holds persistent references")

    # The callables a batch may name, each checking its arguments before numpy sees them.

    def make_dtype(self, spec: object, align: object = False, copy: object = True) -> np.dtype:
        if spec not in _PICKLE_DTYPES:
            raise self.refused(f"asks for arrays of {spec!r}; a batch holds only integers")
        return np.dtype(str(spec), False, True)  # a copy: BUILD may change its byte order

    def encode(self, text: object, encoding: object = "utf-8") -> bytes:
        # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(text, "latin1"); other codecs
        # are not needed and could reach code in the codec registry.
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise self.refused(f"calls _codecs.encode with {encoding!r}, not 'latin1'")
        self.spend(len(text))
        return text.encode("latin1")

    def reconstruct(self, subtype: object, shape: object, typecode: object) -> np.ndarray:
        # Pickled arrays start empty, as _reconstruct(ndarray, (0,), b"b"); BUILD fills them.
        if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise self.refused(f"asks numpy for an array of {subtype!r} and shape {shape!r}")
        self.count_array()
        array: np.ndarray = _numpy_helper("multiarray", "_reconstruct")(np.ndarray, (0,), b"b")
        self.unfilled[id(array)] = array
        return array

    def frombuffer(self, buffer: object, dtype: object, shape: object, order: object) -> Any:
        # Protocol 5 pickles arrays as _frombuffer(bytes or bytearray, dtype, shape, order).
        if not isinstance(buffer, bytes | bytearray) or not isinstance(dtype, np.dtype):
            raise self.refused(f"asks numpy for an array over {type(buffer).__name__}")
        self.count_array()
        self.spend(len(buffer))
        return _numpy_helper("numeric", "_frombuffer")(buffer, dtype, shape, order)

    def scalar(self, dtype: object, data: object = None) -> Any:
        # numpy integers in a list of labels: scalar(dtype, their bytes).
        if (
            not isinstance(dtype, np.dtype)
            or dtype.kind not in "iu"
            or not isinstance(data, bytes | str)
            or len(data) != dtype.itemsize
        ):
            raise self.refused(f"asks numpy for a scalar of {dtype!r} from {type(data).__name__}")
        return _numpy_helper("multiarray", "scalar")(dtype, data)

    def count_array(self) -> None:
        self.arrays += 1
        if self.arrays > _PICKLE_MAX_ARRAYS:
            raise self.refused(f"holds more than {_PICKLE_MAX_ARRAYS} arrays")

    # Opcodes that could grow memory without bound, replaced by checked versions.

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, np.ndarray) and self.unfilled.pop(id(target), None) is target:
            # (version, shape, dtype, fortran, raw bytes); numpy checks that they agree
            raw = state[-1] if isinstance(state, tuple) and len(state) in (4, 5) else None
            if not isinstance(raw, bytes | str) or not isinstance(state[-3], np.dtype):
                raise self.refused("fills an array from something other than bytes")
            self.spend(len(raw))
            target.__setstate__(state)
        elif isinstance(target, np.dtype) and _plain_dtype_state(state):
            cast(Any, target).__setstate__(state)
        else:
            raise self.refused(f"sets the state of {type(target).__name__}")

    def load_bytearray8(self) -> None:
        # The base class allocates the announced length before reading it.
        (length,) = struct.unpack("<Q", self.read(8))
        data = self.read(length)
        if len(data) != length:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    def load_append(self) -> None:
        value = self.stack.pop()
        self.container(list).append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self.container(list).extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self.container(dict)[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.container(dict)
        for index in range(0, len(items), 2):
            target[items[index]] = items[index + 1]

    def container(self, kind: type[Any]) -> Any:
        # Only lists and dicts: APPENDS or SETITEM on a bytearray would grow it at each call.
        target = self.stack[-1]
        if type(target) is not kind:
            raise self.refused(f"adds items to a {type(target).__name__}")
        return target


def _plain_dtype_state(state: object) -> bool:
    """Whether ``state`` is what numpy pickles for a plain integer dtype (no fields or sizes)."""
    return (
        isinstance(state, tuple)
        and len(state) in (8, 9)
        and state[0] in (3, 4)
        and state[1] in ("<", ">", "|", "=")
        and state[2:5] == (None, None, None)
        and state[5:8] == (-1, -1, 0)
        and (len(state) == 8 or not state[8])
    )


def _refuse_opcode(unpickler: _DataOnlyUnpickler) -> None:
    raise unpickler.refused("uses an opcode that plain data does not need")


def _invalid_opcode(unpickler: _DataOnlyUnpickler) -> None:
    raise pickle.UnpicklingError("invalid load key: the bytes are not a pickle opcode")


def _counted(load: Callable[[Any], None]) -> Callable[[_DataOnlyUnpickler], None]:
    def counted(unpickler: _DataOnlyUnpickler) -> None:
        unpickler.opcodes += 1
        if unpickler.opcodes > _PICKLE_MAX_OPCODES:
            raise unpickler.refused(
                f"has more than {_PICKLE_MAX_OPCODES:,} opcodes (an official batch has about "
                f"30,000)"
            )
        load(unpickler)

    return counted


def _dispatch_table() -> dict[int, Callable[[Any], None]]:
    checked: dict[int, Callable[[Any], None]] = {
        pickle.BUILD[0]: _DataOnlyUnpickler.load_build,
        pickle.BYTEARRAY8[0]: _DataOnlyUnpickler.load_bytearray8,
        pickle.APPEND[0]: _DataOnlyUnpickler.load_append,
        pickle.APPENDS[0]: _DataOnlyUnpickler.load_appends,
        pickle.SETITEM[0]: _DataOnlyUnpickler.load_setitem,
        pickle.SETITEMS[0]: _DataOnlyUnpickler.load_setitems,
    }
    base = pickle._Unpickler.dispatch
    table: dict[int, Callable[[Any], None]] = {}
    for code in range(256):
        if code in _PICKLE_OPCODES:
            table[code] = _counted(checked.get(code, base[code]))
        else:
            table[code] = _refuse_opcode if code in base else _invalid_opcode
    return table


_DataOnlyUnpickler.dispatch = _dispatch_table()


def _numpy_helper(submodule: str, name: str) -> Any:
    import importlib

    # Pickles name numpy's helpers numpy.core.* (numpy 1) or numpy._core.* (numpy 2); the
    # objects come from whichever the installed numpy has.
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")  # pragma: no cover


def _parse_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch and check it: ``(pixels (n, 3072) uint8, labels (n,) int64)``."""
    unpickler = _DataOnlyUnpickler(data, source)
    try:
        batch = unpickler.load()
    except NetlensError:
        raise
    except Exception as error:  # a parser of untrusted bytes can fail in many ways
        raise NetlensValueError(
            f"Expected a CIFAR-10 batch (a pickled dict) in {source}, but the file is corrupt "
            f"or truncated ({type(error).__name__}: {error}). {_hint(source)}"
        ) from error
    finally:
        unpickler.close()
    if not isinstance(batch, dict):
        raise NetlensValueError(
            f"Expected a CIFAR-10 batch (a pickled dict with 'data' and 'labels') in {source}, "
            f"but got a {type(batch).__name__}. {_hint(source)}"
        )
    fields = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    pixels, labels = fields.get("data"), fields.get("labels")
    if pixels is None or labels is None:
        raise NetlensValueError(
            f"Expected a CIFAR-10 batch with 'data' and 'labels' in {source}, but its keys are "
            f"{sorted(map(str, fields))}. {_hint(source)}"
        )
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 2
        or pixels.shape[1] != 3 * _CIFAR10_SIDE**2
        or pixels.shape[0] > _CIFAR10_BATCH_IMAGES
    ):
        raise NetlensValueError(
            f"Expected 'data' in {source} to be a uint8 array of shape (n, 3072) with n at most "
            f"{_CIFAR10_BATCH_IMAGES:,}, but got {_describe(pixels)}. {_hint(source)}"
        )
    try:
        targets = np.asarray(labels)
        valid = targets.shape == (len(pixels),) and targets.dtype.kind in "iu"
        valid = valid and (not targets.size or (targets.min() >= 0 and targets.max() <= 9))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise NetlensValueError(
            f"Expected 'labels' in {source} to be {len(pixels)} ints in 0..9, but got "
            f"{_describe(labels)}. {_hint(source)}"
        )
    # Arrays unpickled from bytes are read-only; torch wants writable memory.
    return np.require(pixels, requirements=["C", "W"]), targets.astype(np.int64)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _cifar_images(pixels: Sequence[np.ndarray], *, grey: bool, size: int) -> torch.Tensor:
    """Luma (if grey), antialiased resize, then [0, 255] -> [-1, 1], block by block."""
    total = sum(len(block) for block in pixels)
    out = torch.empty(total, 1 if grey else 3, size, size)
    red, green, blue = _LUMA
    start = 0
    for batch in pixels:
        rgb = torch.from_numpy(batch).view(-1, 3, _CIFAR10_SIDE, _CIFAR10_SIDE)
        for offset in range(0, len(rgb), _CONVERT_BLOCK):
            chunk = rgb[offset : offset + _CONVERT_BLOCK]
            if grey:  # channel by channel, in place: a few times faster than a weighted sum
                block = chunk[:, 0:1].float().mul_(red)
                block.add_(chunk[:, 1:2].float(), alpha=green).add_(
                    chunk[:, 2:3].float(), alpha=blue
                )
            else:
                block = chunk.float()
            if size != _CIFAR10_SIDE:
                block = F.interpolate(
                    block, size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
            out[start : start + len(block)] = block.div_(127.5).sub_(1).clamp_(-1, 1)
            start += len(block)
    return out


# MNIST -----------------------------------------------------------------------------------------


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if _is_file(candidate):
            return candidate
    return None


class _IdxFile:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, gzipped or not.

    Opening reads and checks only the header (``shape``); :meth:`read` then reads the body, no
    more than the header announces plus one byte, so a file can be judged on its declared size
    before anything large is read or inflated.
    """

    def __init__(self, path: Path, *, ndim: int) -> None:
        self.path = path
        self.ndim = ndim
        self.file = _open_for_reading(path)
        self.stream: _Source = self.file
        try:
            if path.suffix == ".gz":
                self.stream = gzip.GzipFile(fileobj=self.file, mode="rb")
            self.shape = self._read_header()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _IdxFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.file.close()  # GzipFile leaves the file object it was given open

    def _raw(self, size: int) -> bytes:
        try:
            return self.stream.read(size)
        except PermissionError as error:
            raise _permission_error(self.path, error) from error
        except (OSError, EOFError, zlib.error) as error:
            raise NetlensValueError(
                f"Expected a gzip-compressed IDX file in {self.path}, but it is corrupt or "
                f"truncated ({type(error).__name__}: {error}). {_hint(self.path)}"
            ) from error

    def _read_header(self) -> tuple[int, ...]:
        ndim, path = self.ndim, self.path
        header = self._raw(4 + 4 * ndim)
        expected_magic = (_IDX_UBYTE << 8) | ndim
        magic = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
        if magic != expected_magic:
            kind = "image" if ndim == 3 else "label"
            got = f"{magic:#010x}" if magic is not None else f"a file of {len(header)} bytes"
            raise NetlensValueError(
                f"Expected the IDX magic number {expected_magic:#010x} (unsigned bytes, {ndim} "
                f"dimensions) of an MNIST {kind} file in {path}, but got {got}. "
                f"Is it the right file, and decompressed only once? {_hint(path)}"
            )
        if len(header) < 4 + 4 * ndim:
            raise NetlensValueError(
                f"Expected an IDX file with a {4 + 4 * ndim}-byte header in {path}, but the file "
                f"has only {len(header)} bytes. {_hint(path)}"
            )
        return tuple(struct.unpack(f">{ndim}I", header[4:]))

    def read(self) -> np.ndarray:
        """The body as a uint8 array of :attr:`shape`; call after checking the shape."""
        header = 4 + 4 * self.ndim
        size = int(np.prod(self.shape, dtype=np.int64))
        body = self._raw(size + 1)
        if len(body) != size:
            state = "truncated" if len(body) < size else "too long"
            got = f"{header + len(body)}" if len(body) < size else "more"
            raise NetlensValueError(
                f"Expected {header + size} bytes in {self.path} (its header says shape "
                f"{self.shape}), but got {got}: the file is {state}. {_hint(self.path)}"
            )
        return np.frombuffer(body, dtype=np.uint8).reshape(self.shape)


# Writing files: atomically, durably, with the mode a plain open() gives ------------------------


def _create_partial(destination: Path) -> tuple[BinaryIO, Path]:
    """A new hidden file ``.NAME.XXXXXXXX.part`` next to ``destination``, locked while open.

    Created with mode 0666 less the umask, as any plain ``open(path, "w")`` would (``mkstemp``
    gives 0600, which outputs and downloaded data should not keep). The lock tells
    :func:`_remove_stale_partials` that the file is being written.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        partial = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
        try:
            descriptor = os.open(partial, flags, 0o666)
        except FileExistsError:
            continue
        file = os.fdopen(descriptor, "wb")
        if sys.platform != "win32":
            import fcntl

            with suppress(OSError):  # a file system without locks: write unlocked
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return file, partial
    raise FileExistsError(f"could not create a new partial file next to {destination}")


def _commit_partial(file: BinaryIO, partial: Path, destination: Path) -> None:
    """Flush ``file`` to disk, then rename it to ``destination``.

    A power cut leaves the old file or the complete new one under that name, never an empty or a
    partial one.
    """
    file.flush()
    os.fsync(file.fileno())
    if sys.platform == "win32":  # pragma: no cover - an open file cannot be renamed there
        file.close()
    os.replace(partial, destination)
    file.close()  # after the rename: the lock covers the file until it has its final name
    if sys.platform != "win32":
        try:
            folder = os.open(destination.parent, os.O_RDONLY)
        except OSError:  # pragma: no cover - a folder we just wrote into
            return
        try:
            os.fsync(folder)  # the rename itself
        except OSError:  # pragma: no cover - some file systems cannot sync folders
            pass
        finally:
            os.close(folder)


@contextmanager
def _atomic_file(destination: Path) -> Iterator[BinaryIO]:
    """Write ``destination`` through a partial file that is synced and renamed only on success.

    Used for the downloads and, by the examples, for every output file and checkpoint.
    """
    file, partial = _create_partial(destination)
    try:
        yield file
        _commit_partial(file, partial, destination)
    finally:
        file.close()
        partial.unlink(missing_ok=True)


def _remove_stale_partials(folder: Path, name: str = "*") -> list[Path]:
    """Delete the partial files of ``name`` (any name: ``"*"``) in ``folder`` that no writer holds.

    A run killed while writing leaves its ``.NAME.XXXXXXXX.part`` behind (eight characters, as
    :func:`_create_partial` and, before it, ``mkstemp`` name them); a writer alive holds a lock on
    its own (where locks exist; elsewhere only parts older than a day are removed). Returns the
    files removed.
    """
    pattern = f".{glob.escape(name) if name != '*' else '*'}.????????.part"
    removed: list[Path] = []
    try:
        candidates = sorted(folder.glob(pattern))
    except OSError:
        return removed
    for partial in candidates:
        if _unused(partial):
            try:
                partial.unlink()
            except OSError:
                continue
            removed.append(partial)
    return removed


def _unused(partial: Path) -> bool:
    if sys.platform == "win32":  # pragma: no cover
        try:
            return time.time() - partial.stat().st_mtime > 86_400
        except OSError:
            return False
    import fcntl

    try:
        descriptor = os.open(partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return True


# Downloads -------------------------------------------------------------------------------------


def _download_from_mirrors(name: str, folder: Path, md5: str) -> None:
    failures: list[str] = []
    for base in MNIST_MIRRORS:
        url = base.rstrip("/") + "/" + name
        try:
            _download(url, folder / name, md5)
            return
        except _LocalDownloadError:
            raise  # the same on every mirror: say it once
        except DownloadError as error:
            failures.append(f"({len(failures) + 1}) {error.reason}")  # type: ignore[attr-defined]
    raise DownloadError(
        f"Expected to download {name} from one of {len(MNIST_MIRRORS)} mirrors, but every one "
        f"failed: {' '.join(failures)} Download it by hand from one of {', '.join(MNIST_MIRRORS)} "
        f"into {folder / name} (MD5 {md5}) or check the network."
    )


def _download(url: str, destination: Path, md5: str) -> None:
    """Stream ``url`` to a partial file next to ``destination``; rename it when complete and valid.

    Any failure removes the partial file, so ``destination`` is either absent or complete. A
    failure on this machine (a folder that cannot be made or written, a full disk) raises
    :class:`_LocalDownloadError`, which no other mirror could avoid.
    """
    import http.client
    import urllib.error
    import urllib.request

    by_hand = f"Download it by hand into {destination} (MD5 {md5}) or check the network."

    def failed(message: str, reason: str) -> DownloadError:
        error = DownloadError(f"{message}; nothing was kept. {by_hand}")
        error.reason = f"{url}: {reason}."  # type: ignore[attr-defined]
        return error

    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        file, partial = _create_partial(destination)
    except OSError as error:
        raise _local_download_error(destination, error) from error
    try:
        with file:
            try:
                response = urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                reason = _network_reason(error)
                raise failed(f"Expected to download {url}, but got {reason}", reason) from error
            digest = hashlib.md5(usedforsecurity=False)
            received = 0
            deadline = time.monotonic() + _DOWNLOAD_DEADLINE
            with response:
                length = response.headers.get("Content-Length")
                while True:
                    try:  # read1: whatever has arrived, so that the deadline is checked often
                        chunk = response.read1(_CHUNK)
                    except (http.client.HTTPException, OSError, ValueError) as error:
                        reason = _network_reason(error)
                        raise failed(
                            f"Expected to download {url}, but got {reason} after {received} bytes",
                            reason,
                        ) from error
                    if not chunk:
                        break
                    try:
                        file.write(chunk)
                    except OSError as error:
                        raise _local_download_error(destination, error) from error
                    digest.update(chunk)
                    received += len(chunk)
                    if time.monotonic() > deadline:
                        reason = (
                            f"not complete after the deadline of {_DOWNLOAD_DEADLINE:g} s "
                            f"({received} bytes received)"
                        )
                        raise failed(f"Expected to download {url}, but it was {reason}", reason)
            if length is not None and length.isdigit() and received != int(length):
                raise failed(
                    f"Expected {length} bytes from {url}, but the connection closed after "
                    f"{received}. Try again",
                    f"connection closed after {received} of {length} bytes",
                )
            if digest.hexdigest() != md5:
                raise failed(
                    f"Expected MD5 {md5} for {url}, but the {received} bytes received have MD5 "
                    f"{digest.hexdigest()}",
                    f"MD5 {digest.hexdigest()}, expected {md5}",
                )
            try:
                _commit_partial(file, partial, destination)
            except OSError as error:
                raise _local_download_error(destination, error) from error
    finally:
        partial.unlink(missing_ok=True)


def _network_reason(error: BaseException) -> str:
    import urllib.error

    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP error {error.code} ({error.reason})"
    if isinstance(error, urllib.error.URLError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


def _local_download_error(destination: Path, error: OSError) -> _LocalDownloadError:
    folder = destination.parent
    if isinstance(error, PermissionError):
        reason = (
            f"permission to write there is denied ({error.strerror}): give this user the right "
            f"to write to {folder}, or choose another folder"
        )
    elif isinstance(error, FileExistsError | NotADirectoryError):
        reason = f"{folder} or a folder above it is a file, not a folder"
    else:
        where = f" ({error.filename})" if error.filename else ""
        reason = f"got {type(error).__name__}: {error.strerror or error}{where}"
    return _LocalDownloadError(
        f"Expected to save the download as {destination}, but {reason}. Nothing was downloaded "
        f"or kept, and no other mirror was tried: the problem is on this machine."
    )
