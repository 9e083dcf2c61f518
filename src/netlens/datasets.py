"""Readers for the example experiments' data: CIFAR-10 and MNIST, from their official files.

Both are ``torch.utils.data.Dataset`` s in torchvision's shape (``dataset[i]`` is an
``(image, label)`` pair; ``len``, ``.classes``, ``.data``, ``.targets``), with no torchvision and
no Pillow. Each split is read and preprocessed once, at construction, into one float tensor
(``.data``), so that a ``DataLoader`` only indexes it.

The files are untrusted input. CIFAR-10 batches are pickles, read by an unpickler that admits
only plain data and numpy arrays; archive members with absolute paths, ``..`` or links are
refused; truncated or corrupt files raise an error that names the file. ``download=True`` fetches
the official files, checks their published MD5 and renames a partial file into place only when
it is complete, so an interrupted download never leaves a file that looks finished.

Importing this module is not part of ``import netlens``: ``import netlens.datasets`` when needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._errors import NetlensError, NetlensTypeError, NetlensValueError

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
#: Mean and standard deviation of the MNIST training pixels in [0, 1], for ``standardize=True``.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# Seconds without progress before a download gives up.
_DOWNLOAD_TIMEOUT = 60.0
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


class DatasetNotFoundError(NetlensError, FileNotFoundError):
    """The data set's files are not in ``root`` (and ``download`` was not asked for)."""


class DownloadError(NetlensError, OSError):
    """A download failed: no network, an HTTP error, a dropped connection or a wrong checksum.

    Nothing is left behind: the partial file is removed and no final file is written.
    """


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

    The batches are pickles: they are read by an unpickler that admits only numpy arrays and
    plain data, so a crafted file cannot run code; it is refused with a
    :class:`~netlens.NetlensValueError`, as is an archive member with an absolute path, ``..`` or
    a link, and a truncated or corrupt file (the message names the file).

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
        DatasetNotFoundError: The files are not in ``root`` and ``download`` is ``False``.
        DownloadError: The download failed; nothing is left behind.
        NetlensValueError: A file is corrupt, truncated, unsafe or not in the official format.

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
        folder = _check_root(root)
        _check_flag("train", train)
        _check_flag("download", download)
        _check_flag("grey", grey)
        _check_transforms(transform, target_transform)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise NetlensValueError(
                f"Expected size to be a positive int or None, but got {size!r}."
            )
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        if download and _cifar_source(folder, names) is None:
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
        images = _cifar_images(pixels, grey=grey, size=_CIFAR10_SIDE if size is None else size)
        super().__init__(folder, train, images, targets, transform, target_transform)
        self.classes = list(CIFAR10_CLASSES)


class MNIST(_ImageDataset):
    """MNIST from the four official IDX files in ``root``, gzipped or not.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``train=True``) or the
    ``t10k-`` pair, each plain or with ``.gz`` added. The headers are checked: the magic number
    (unsigned bytes, 3 dimensions for images, 1 for labels), 28x28 images, as many labels as
    images, labels 0..9 and a file length that matches; any mismatch names the file.

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
        DatasetNotFoundError: A file is not in ``root`` and ``download`` is ``False``.
        DownloadError: The download failed; nothing is left behind.
        NetlensValueError: A file is corrupt, truncated or not in the IDX format.

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
        folder = _check_root(root)
        _check_flag("train", train)
        _check_flag("download", download)
        _check_flag("standardize", standardize)
        _check_transforms(transform, target_transform)
        names = _MNIST_FILES[train]
        if download:
            for name in names:
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
        images = _read_idx(paths[0], ndim=3)
        labels = _read_idx(paths[1], ndim=1)
        if images.shape[1:] != (28, 28):
            raise NetlensValueError(
                f"Expected 28x28 images in {paths[0]}, but its header says "
                f"{images.shape[1]}x{images.shape[2]}. Is it an MNIST image file?"
            )
        if len(labels) != len(images):
            raise NetlensValueError(
                f"Expected as many labels in {paths[1]} as images in {paths[0]} ({len(images)}), "
                f"but got {len(labels)}. The files belong to different splits or data sets."
            )
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
    return Path(os.fspath(root)).expanduser()


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise NetlensTypeError(f"Expected {name} to be a bool, but got {value!r}.")


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


# CIFAR-10 --------------------------------------------------------------------------------------


def _cifar_source(folder: Path, names: Sequence[str]) -> Path | None:
    """The batch folder if it has every batch needed, else the archive if present, else None."""
    batches = folder / _CIFAR10_FOLDER
    if all((batches / name).is_file() for name in names):
        return batches
    archive = folder / _CIFAR10_ARCHIVE
    return archive if archive.is_file() else None


def _cifar_not_found(folder: Path, names: Sequence[str]) -> DatasetNotFoundError:
    batches = folder / _CIFAR10_FOLDER
    if batches.is_dir():
        missing = ", ".join(name for name in names if not (batches / name).is_file())
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
    batches = []
    for name in names:
        path = folder / name
        with path.open("rb") as stream:
            batches.append(_parse_cifar_batch(stream, str(path)))
    return batches


def _read_cifar_archive(archive: Path, names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the wanted batches in one streaming pass; refuse unsafe members on the way."""
    wanted = {f"{_CIFAR10_FOLDER}/{name}": name for name in names}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                _check_member(member, archive)
                name = member.name
                while name.startswith("./"):  # archives made with `tar czf x.tar.gz ./...`
                    name = name[2:]
                if name in wanted and member.isfile():
                    stream = tar.extractfile(member)
                    if stream is None:  # pragma: no cover - isfile() members always have data
                        continue
                    found[wanted[name]] = _parse_cifar_batch(
                        io.BytesIO(stream.read()), f"{member.name} in {archive}"
                    )
    except NetlensError:
        raise
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


class _DataOnlyUnpickler(pickle.Unpickler):
    """Admit only what pickled numpy arrays and plain Python data need; refuse anything else."""

    def __init__(self, stream: BinaryIO, source: str) -> None:
        # latin1 reads the Python 2 strings of the official batches (numpy needs str there).
        super().__init__(stream, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _pickle_globals().get((module, name))
        if allowed is None:
            raise NetlensValueError(
                f"Expected a CIFAR-10 batch holding only numpy arrays and plain data in "
                f"{self.source}, but the pickle asks for {module}.{name}, which could run code; "
                f"refused to load it. The file is not a genuine CIFAR-10 batch: delete it and "
                f"use the official archive ({CIFAR10_URL})."
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise NetlensValueError(
            f"Expected a plain pickle in {self.source}, but it holds persistent references; "
            f"refused to load it. {_hint(self.source)}"
        )


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(text, "latin1"); other codecs
    # are not needed and could reach code in the codec registry.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {}


def _pickle_globals() -> dict[tuple[str, str], Any]:
    if not _PICKLE_GLOBALS:
        allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
            ("builtins", "bytearray"): bytearray,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "complex"): complex,
        }
        # Pickles name numpy's helpers numpy.core.* (numpy 1) or numpy._core.* (numpy 2); the
        # objects come from whichever the installed numpy has.
        for submodule, name in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        ):
            helper = _numpy_helper(submodule, name)
            if helper is not None:
                for package in ("numpy.core", "numpy._core"):
                    allowed[(f"{package}.{submodule}", name)] = helper
        _PICKLE_GLOBALS.update(allowed)
    return _PICKLE_GLOBALS


def _numpy_helper(submodule: str, name: str) -> Any:
    import importlib

    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    return None  # pragma: no cover - every numpy since 1.x has them


def _parse_cifar_batch(stream: BinaryIO, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch and check it: ``(pixels (n, 3072) uint8, labels (n,) int64)``."""
    try:
        batch = _DataOnlyUnpickler(stream, source).load()
    except NetlensError:
        raise
    except Exception as error:  # a parser of untrusted bytes can fail in many ways
        raise NetlensValueError(
            f"Expected a CIFAR-10 batch (a pickled dict) in {source}, but the file is corrupt "
            f"or truncated ({type(error).__name__}: {error}). {_hint(source)}"
        ) from error
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
    ):
        raise NetlensValueError(
            f"Expected 'data' in {source} to be a uint8 array of shape (n, 3072), but got "
            f"{_describe(pixels)}. {_hint(source)}"
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
    # Arrays unpickled from protocol-5 buffers are read-only; torch wants writable memory.
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
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions, checking its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise NetlensValueError(
            f"Expected a gzip-compressed IDX file in {path}, but it is corrupt or truncated "
            f"({type(error).__name__}: {error}). {_hint(path)}"
        ) from error
    header = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic != expected_magic:
        kind = "image" if ndim == 3 else "label"
        got = f"{magic:#010x}" if magic is not None else f"a file of {len(raw)} bytes"
        raise NetlensValueError(
            f"Expected the IDX magic number {expected_magic:#010x} (unsigned bytes, {ndim} "
            f"dimensions) of an MNIST {kind} file in {path}, but got {got}. "
            f"Is it the right file, and decompressed only once? {_hint(path)}"
        )
    if len(raw) < header:
        raise NetlensValueError(
            f"Expected an IDX file with a {header}-byte header in {path}, but the file has only "
            f"{len(raw)} bytes. {_hint(path)}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected_length = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_length:
        state = "truncated" if len(raw) < expected_length else "too long"
        raise NetlensValueError(
            f"Expected {expected_length} bytes in {path} (its header says shape {shape}), but "
            f"got {len(raw)}: the file is {state}. {_hint(path)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# Downloads -------------------------------------------------------------------------------------


def _download_from_mirrors(name: str, folder: Path, md5: str) -> None:
    failures = []
    for base in MNIST_MIRRORS:
        try:
            _download(base.rstrip("/") + "/" + name, folder / name, md5)
            return
        except DownloadError as error:
            failures.append(str(error))
    raise DownloadError(
        f"Expected to download {name} from one of {len(MNIST_MIRRORS)} mirrors, but every one "
        f"failed:\n  " + "\n  ".join(failures)
    )


def _download(url: str, destination: Path, md5: str) -> None:
    """Stream ``url`` to a partial file next to ``destination``; rename it when complete and valid.

    Any failure removes the partial file, so ``destination`` is either absent or complete.
    """
    import http.client
    import urllib.error
    import urllib.request

    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"Expected a writable folder for {destination.name}, but could not create "
            f"{destination.parent}: {error}."
        ) from error
    descriptor, partial_name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    partial = Path(partial_name)
    by_hand = f"Download it by hand into {destination} (MD5 {md5}) or check the network."
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with (
            os.fdopen(descriptor, "wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response,
        ):
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if length is not None and length.isdigit() and received != int(length):
            raise DownloadError(
                f"Expected {length} bytes from {url}, but the connection closed after "
                f"{received}. Try again; nothing was kept. {by_hand}"
            )
        if digest.hexdigest() != md5:
            raise DownloadError(
                f"Expected MD5 {md5} for {url}, but the {received} bytes received have MD5 "
                f"{digest.hexdigest()}; nothing was kept. {by_hand}"
            )
        os.chmod(partial, 0o644)
        os.replace(partial, destination)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP error {error.code} ({error.reason})"
        elif isinstance(error, urllib.error.URLError):
            reason = f"{type(error.reason).__name__}: {error.reason}"
        else:
            reason = f"{type(error).__name__}: {error}"
        raise DownloadError(f"Expected to download {url}, but got {reason}. {by_hand}") from error
    finally:
        partial.unlink(missing_ok=True)
