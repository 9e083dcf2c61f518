"""Tests of netlens.datasets on small files written here in the official formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from netlens import NetlensError, NetlensTypeError, NetlensValueError, datasets
from netlens.datasets import CIFAR10, MNIST, DatasetNotFoundError, DownloadError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

# --- writing CIFAR-10 in the official layout ---------------------------------------------------


class Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Write strings and bytes as Python 2 ``str`` (BINSTRING), as the official batches have."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def py2_pickle(obj: object) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    # Python 2's numpy named its helpers numpy.core.*.
    return out.getvalue().replace(b"numpy._core.", b"numpy.core.")


def make_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    pixels[0] = 0  # the extremes map to exactly -1 and 1
    if n > 1:
        pixels[1] = 255
    return pixels, [int(x) for x in rng.integers(0, 10, size=n)]


def batch_bytes(pixels: np.ndarray, labels: list[int], style: str = "py3") -> bytes:
    if style == "py2":
        return py2_pickle({"batch_label": "batch", "labels": labels, "data": pixels})
    batch = {b"batch_label": b"batch", b"labels": labels, b"data": pixels, b"filenames": []}
    protocol = {"py3": 2, "protocol4": 4, "protocol5": 5}[style]
    return pickle.dumps(batch, protocol=protocol)


def cifar_files(n: int = 3, style: str = "py3") -> tuple[dict[str, bytes], dict[str, Any]]:
    """Bytes of every batch (by file name) and the expected pixels / labels per split."""
    files: dict[str, bytes] = {}
    expected: dict[str, Any] = {"train": ([], []), "test": ([], [])}
    for seed, name in enumerate([*TRAIN_BATCHES, "test_batch"]):
        pixels, labels = make_batch(n, seed)
        files[name] = batch_bytes(pixels, labels, style)
        split = "test" if name == "test_batch" else "train"
        expected[split][0].append(pixels)
        expected[split][1].extend(labels)
    expected = {k: (np.concatenate(p), np.array(lab)) for k, (p, lab) in expected.items()}
    files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    return files, expected


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def tar_gz(members: dict[str, bytes], extra: Sequence[tarfile.TarInfo] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_archive(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / ARCHIVE
    path.write_bytes(tar_gz({**files, "readme.html": b"<html></html>"}))
    return path


# --- a slow, obvious float64 reference of the preprocessing ---------------------------------


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bilinear weights: a triangle filter widened by the scale when shrinking."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        for j in range(n_in):
            matrix[i, j] = max(0.0, 1.0 - abs((j + 0.5 - center) / support))
        matrix[i] /= matrix[i].sum()
    return matrix


def reference_images(pixels: np.ndarray, grey: bool, size: int) -> np.ndarray:
    rgb = pixels.reshape(-1, 3, 32, 32).astype(np.float64)
    images = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3] if grey else rgb
    rows = resize_matrix(32, size)
    resized = np.einsum("ij,ncjk,lk->ncil", rows, images, rows)
    return resized / 127.5 - 1


# --- reading CIFAR-10 ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py3", "py2", "protocol4", "protocol5"])
@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_cifar_reads_both_layouts_and_pickle_styles(
    tmp_path: Path, layout: str, style: str
) -> None:
    files, expected = cifar_files(3, style)
    (write_folder if layout == "folder" else write_archive)(tmp_path, files)
    for train, split in ((True, "train"), (False, "test")):
        dataset = CIFAR10(tmp_path, train=train)
        pixels, labels = expected[split]
        assert len(dataset) == len(labels) == (15 if train else 3)
        assert dataset.data.shape == (len(labels), 1, 28, 28)
        assert dataset.data.dtype == torch.float32
        assert dataset.targets.tolist() == labels.tolist()
        torch.testing.assert_close(
            dataset.data.double(),
            torch.from_numpy(reference_images(pixels, grey=True, size=28)),
            atol=1e-5,
            rtol=0,
        )
        image, label = dataset[2]
        assert isinstance(label, int) and label == labels[2]
        assert torch.equal(image, dataset.data[2])
        assert dataset.classes[0] == "airplane" and len(dataset.classes) == 10


@pytest.mark.parametrize(("grey", "size"), [(True, 28), (True, 16), (False, 28), (True, 40)])
def test_cifar_preprocessing_matches_float64_reference(
    tmp_path: Path, grey: bool, size: int
) -> None:
    files, expected = cifar_files(4)
    write_folder(tmp_path, files)
    dataset = CIFAR10(tmp_path, train=False, grey=grey, size=size)
    reference = torch.from_numpy(reference_images(expected["test"][0], grey, size))
    assert dataset.data.shape == reference.shape
    torch.testing.assert_close(dataset.data.double(), reference, atol=1e-5, rtol=0)
    assert dataset.data.min() >= -1 and dataset.data.max() <= 1


def test_cifar_extremes_and_no_resize(tmp_path: Path) -> None:
    files, expected = cifar_files(4)
    write_folder(tmp_path, files)
    grey = CIFAR10(tmp_path, train=False)
    # float32 rounding in the luma and resize weights: within a few ulps of the ends.
    assert torch.all((grey.data[0] + 1).abs() <= 1e-6) and torch.all(
        (grey.data[1] - 1).abs() <= 1e-6
    )
    rgb = CIFAR10(tmp_path, train=False, grey=False, size=None)
    assert rgb.data.shape == (4, 3, 32, 32)
    pixels = torch.from_numpy(expected["test"][0]).view(-1, 3, 32, 32).double()
    torch.testing.assert_close(rgb.data.double(), pixels / 127.5 - 1, atol=1e-6, rtol=0)


def test_cifar_grey_agrees_with_pillow(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    files, expected = cifar_files(4)
    write_folder(tmp_path, files)
    dataset = CIFAR10(tmp_path, train=False)
    for index, row in enumerate(expected["test"][0]):
        picture = image_module.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0))
        grey = picture.convert("L").resize((28, 28), image_module.BILINEAR)
        reference = torch.from_numpy(np.asarray(grey, dtype=np.float64) / 127.5 - 1)
        # Pillow rounds to integers twice (after the luma and after the resize).
        difference = (dataset.data[index, 0].double() - reference).abs()
        assert difference.max() <= 1.6 / 127.5
        assert difference.mean() <= 0.5 / 127.5


def test_cifar_prefers_complete_folder_else_archive(tmp_path: Path) -> None:
    files, _ = cifar_files(3)
    write_folder(tmp_path, {"test_batch": files["test_batch"]})
    with pytest.raises(DatasetNotFoundError, match="data_batch_1, data_batch_2"):
        CIFAR10(tmp_path, train=True)
    assert len(CIFAR10(tmp_path, train=False)) == 3
    write_archive(tmp_path, files)
    assert len(CIFAR10(tmp_path, train=True)) == 15


def test_cifar_archive_with_dot_slash_names(tmp_path: Path) -> None:
    files, expected = cifar_files(2)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / ARCHIVE).write_bytes(out.getvalue())
    assert CIFAR10(tmp_path, train=False).targets.tolist() == expected["test"][1].tolist()


def test_cifar_not_found_says_where_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="download=True") as caught:
        CIFAR10(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, NetlensError)
    files, _ = cifar_files(2)
    folder = write_folder(tmp_path, files)
    with pytest.raises(DatasetNotFoundError, match="folder above"):
        CIFAR10(folder)


def test_cifar_arguments_are_checked(tmp_path: Path) -> None:
    files, _ = cifar_files(2)
    write_folder(tmp_path, files)
    for size in (0, -3):
        with pytest.raises(NetlensValueError, match="size"):
            CIFAR10(tmp_path, size=size)
    for size in (2.5, True, "28"):  # a wrong type is a type error, as everywhere
        with pytest.raises(NetlensTypeError, match="size"):
            CIFAR10(tmp_path, size=size)  # type: ignore[arg-type]
    with pytest.raises(NetlensTypeError, match="root"):
        CIFAR10(None)  # type: ignore[arg-type]
    with pytest.raises(NetlensTypeError, match="train"):
        CIFAR10(tmp_path, train="no")  # type: ignore[arg-type]
    with pytest.raises(NetlensTypeError, match="transform"):
        CIFAR10(tmp_path, transform=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CIFAR10(tmp_path, True, True)  # type: ignore[misc]


def test_cifar_transforms_and_dataloader(tmp_path: Path) -> None:
    files, expected = cifar_files(4)
    write_folder(tmp_path, files)
    flipped = CIFAR10(
        str(tmp_path), train=False, transform=lambda x: x.flip(-1), target_transform=str
    )
    plain = CIFAR10(tmp_path, train=False)
    image, label = flipped[3]
    assert torch.equal(image, plain.data[3].flip(-1)) and label == str(expected["test"][1][3])

    dataset = CIFAR10(tmp_path, train=True)
    loader = DataLoader(
        dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for images, labels in loader:
        assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        seen.append(labels)
    assert sorted(torch.cat(seen).tolist()) == sorted(dataset.targets.tolist())
    # Worker processes started with "spawn" receive the dataset pickled.
    again = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(again.data, dataset.data) and len(again) == 20
    assert "Number of datapoints: 20" in repr(dataset)


# --- CIFAR-10 security and corrupt files ----------------------------------------------------


class RunsCode:
    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def evil_batch(marker: Path, how: str) -> bytes:
    payload: Any = {
        "system": RunsCode(os.system, f"touch {marker}"),
        "eval": RunsCode(eval, f"open({str(marker)!r}, 'w')"),
        "codec": RunsCode(__import__("codecs").encode, "abc", "rot13"),
    }[how]
    return pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2)


@pytest.mark.parametrize("how", ["system", "eval", "codec"])
@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_pickle_that_would_run_code_is_refused(tmp_path: Path, layout: str, how: str) -> None:
    marker = tmp_path / "ran"
    files, _ = cifar_files(2)
    files["test_batch"] = evil_batch(marker, how)
    (write_folder if layout == "folder" else write_archive)(tmp_path / "data", files)
    with pytest.raises(NetlensValueError, match="test_batch") as caught:
        CIFAR10(tmp_path / "data", train=False)
    if how != "codec":
        assert "could run code" in str(caught.value)
        assert ("system" if how == "system" else "eval") in str(caught.value)
    assert not marker.exists()


def special_member(kind: str) -> tarfile.TarInfo:
    name = {
        "absolute": "/tmp/evil",
        "dotdot": f"{FOLDER}/../../evil",
        "symlink": f"{FOLDER}/data_batch_1",
        "hardlink": f"{FOLDER}/data_batch_1",
        "fifo": f"{FOLDER}/pipe",
    }[kind]
    info = tarfile.TarInfo(name)
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.size = 3
    return info


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "hardlink", "fifo"])
def test_unsafe_archive_members_are_refused(tmp_path: Path, kind: str) -> None:
    files, _ = cifar_files(2)
    if kind in ("symlink", "hardlink"):
        del files["data_batch_1"]
    archive = tmp_path / ARCHIVE
    archive.write_bytes(tar_gz(files, [special_member(kind)]))
    with pytest.raises(NetlensValueError, match="refused") as caught:
        CIFAR10(tmp_path, train=True)
    message = str(caught.value)
    assert str(archive) in message and special_member(kind).name in message


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda good: truncated(good), "corrupt or truncated"),
        (lambda good: b"not a pickle at all", "corrupt or truncated"),
        (lambda good: b"", "corrupt or truncated"),
        (lambda good: pickle.dumps([1, 2, 3]), "got a list"),
        (lambda good: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "keys"),
        (
            lambda good: pickle.dumps({b"data": np.zeros((2, 3072)), b"labels": [0, 1]}),
            "arrays of 'f8'; a batch holds only integers",
        ),
        (
            lambda good: pickle.dumps({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}),
            "uint8 array",
        ),
        (
            lambda good: pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
            r"shape \(n, 3072\)",
        ),
        (
            lambda good: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
            "2 ints in 0..9",
        ),
        (
            lambda good: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
            "2 ints in 0..9",
        ),
        (
            lambda good: pickle.dumps(
                {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}
            ),
            "2 ints in 0..9",
        ),
    ],
)
def test_corrupt_batch_names_the_file(tmp_path: Path, content: Any, expected: str) -> None:
    files, _ = cifar_files(2)
    files["test_batch"] = content(files["test_batch"])
    folder = write_folder(tmp_path, files)
    with pytest.raises(NetlensValueError, match=expected) as caught:
        CIFAR10(tmp_path, train=False)
    assert str(folder / "test_batch") in str(caught.value)
    assert "download" in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing_batch", "corrupt_member"])
def test_corrupt_archive_names_the_file(tmp_path: Path, damage: str) -> None:
    files, _ = cifar_files(2)
    if damage == "missing_batch":
        del files["test_batch"]
    if damage == "corrupt_member":
        files["test_batch"] = truncated(files["test_batch"])
    archive = write_archive(tmp_path, files)
    if damage == "truncated":
        archive.write_bytes(archive.read_bytes()[:-200])
    if damage == "garbage":
        archive.write_bytes(b"\x1f\x8b" + os.urandom(500))
    with pytest.raises(NetlensValueError) as caught:
        CIFAR10(tmp_path, train=False)
    assert str(archive) in str(caught.value)
    assert "download" in str(caught.value)


# --- MNIST ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


MNIST_NAMES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


def mnist_file_bytes(gz: bool, n_train: int = 5, n_test: int = 3) -> dict[str, bytes]:
    files = {}
    for train, n in ((True, n_train), (False, n_test)):
        images, labels = mnist_arrays(n, int(train))
        for name, array in zip(MNIST_NAMES[train], (images, labels), strict=True):
            data = idx_bytes(array)
            files[name + (".gz" if gz else "")] = gzip.compress(data) if gz else data
    return files


def write_mnist(root: Path, gz: bool = True, **sizes: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in mnist_file_bytes(gz, **sizes).items():
        (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz)
    for train, n in ((True, 5), (False, 3)):
        images, labels = mnist_arrays(n, int(train))
        dataset = MNIST(tmp_path, train=train)
        assert len(dataset) == n and dataset.data.shape == (n, 28, 28)
        assert dataset.data.dtype == torch.float32
        torch.testing.assert_close(
            dataset.data.double(), torch.from_numpy(images / 255.0), atol=1e-7, rtol=0
        )
        assert dataset.targets.dtype == torch.int64
        assert dataset.targets.tolist() == labels.tolist()
        image, label = dataset[1]
        assert image.shape == (1, 28, 28) and torch.equal(image[0], dataset.data[1])
        assert isinstance(label, int) and label == labels[1]
        assert dataset.classes[7] == "7 - seven"


def test_mnist_standardize_and_mixed_compression(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    name = "t10k-labels-idx1-ubyte"
    (tmp_path / name).write_bytes(gzip.decompress((tmp_path / f"{name}.gz").read_bytes()))
    (tmp_path / f"{name}.gz").unlink()
    images, _ = mnist_arrays(3, 0)
    dataset = MNIST(tmp_path, train=False, standardize=True)
    expected = (images / 255.0 - 0.1307) / 0.3081
    torch.testing.assert_close(dataset.data.double(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    assert dataset.standardize


def test_mnist_dataloader_and_transforms(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=10)
    dataset = MNIST(tmp_path, transform=lambda x: x * 2, target_transform=lambda y: y + 100)
    image, label = dataset[0]
    assert torch.equal(image, dataset.data[0][None] * 2) and label == dataset.targets[0] + 100
    loader = DataLoader(MNIST(tmp_path), batch_size=4)
    shapes = [(tuple(images.shape), tuple(labels.shape)) for images, labels in loader]
    assert shapes == [((4, 1, 28, 28), (4,)), ((4, 1, 28, 28), (4,)), ((2, 1, 28, 28), (2,))]


def test_mnist_dataloader_with_worker_processes(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=8)
    dataset = MNIST(tmp_path, standardize=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=2)
    images = torch.cat([batch for batch, _ in loader])
    assert torch.equal(images, dataset.data[:, None])


def damage_mnist(root: Path, damage: str) -> str:
    """Damage one file of the test split; return the name of the file the error must name."""
    images_name, labels_name = MNIST_NAMES[False]
    images, labels = mnist_arrays(3, 0)
    raw = {
        "bad_magic": (images_name, idx_bytes(images, magic=0x0801)),
        "swapped": (images_name, idx_bytes(labels)),
        "wrong_size": (images_name, idx_bytes(images[:, :27, :])),
        "truncated": (images_name, idx_bytes(images)[:-10]),
        "too_long": (labels_name, idx_bytes(labels) + b"\0"),
        "short_header": (labels_name, b"\0\0\x08"),
        "count": (labels_name, idx_bytes(labels[:2])),
        "label_range": (labels_name, idx_bytes(np.array([0, 1, 12]))),
    }
    if damage in raw:
        name, data = raw[damage]
        (root / f"{name}.gz").write_bytes(gzip.compress(data))
        return f"{name}.gz"
    path = root / f"{images_name}.gz"
    if damage == "gz_truncated":
        path.write_bytes(path.read_bytes()[:-20])
    else:  # not gzip at all
        path.write_bytes(b"\0" * 100)
    return path.name


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("bad_magic", "magic number"),
        ("swapped", "magic number"),
        ("wrong_size", "28x28"),
        ("truncated", "truncated"),
        ("too_long", "too long"),
        ("short_header", "magic number"),
        ("count", "as many labels"),
        ("label_range", "0..9"),
        ("gz_truncated", "corrupt or truncated"),
        ("gz_garbage", "corrupt or truncated"),
    ],
)
def test_mnist_bad_files_are_named(tmp_path: Path, damage: str, expected: str) -> None:
    write_mnist(tmp_path)
    name = damage_mnist(tmp_path, damage)
    with pytest.raises(NetlensValueError, match=expected) as caught:
        MNIST(tmp_path, train=False)
    assert str(tmp_path / name) in str(caught.value)


def test_mnist_missing_file(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        MNIST(tmp_path, train=False)
    assert len(MNIST(tmp_path, train=True)) == 5
    with pytest.raises(NetlensTypeError, match="standardize"):
        MNIST(tmp_path, standardize=1)  # type: ignore[arg-type]


# --- downloads against a local server ------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """An HTTP server on 127.0.0.1 serving ``files``.

    Paths in ``drop`` close mid-transfer; paths in ``trickle`` send one byte every 20 ms (until
    the client goes or ``stop`` is set).
    """
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    state = SimpleNamespace(files={}, drop=set(), trickle=set(), hits=[], stop=threading.Event())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in state.drop:
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            if self.path in state.trickle:
                for byte in body:
                    if state.stop.wait(0.02):
                        break
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        break
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_cifar(
    server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, checksum: str | None = None
) -> bytes:
    files, _ = cifar_files(2)
    archive = tar_gz(files)
    server.files["/data/" + ARCHIVE] = archive
    monkeypatch.setattr(datasets, "CIFAR10_URL", f"{server.url}/data/{ARCHIVE}")
    monkeypatch.setattr(datasets, "CIFAR10_MD5", checksum or md5(archive))
    return archive


def test_cifar_download_verifies_and_skips_work_done(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = serve_cifar(server, monkeypatch)
    root = tmp_path / "new" / "cifar"
    dataset = CIFAR10(root, train=False, download=True)
    assert len(dataset) == 2 and server.hits == ["/data/" + ARCHIVE]
    assert sorted(p.name for p in root.iterdir()) == [ARCHIVE]
    assert (root / ARCHIVE).read_bytes() == archive
    assert len(CIFAR10(root, train=True, download=True)) == 10
    assert len(server.hits) == 1  # the archive is there: nothing fetched again


def test_cifar_download_skipped_when_folder_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = cifar_files(2)
    write_folder(tmp_path, files)
    monkeypatch.setattr(datasets, "CIFAR10_URL", closed_port_url() + "/" + ARCHIVE)
    assert len(CIFAR10(tmp_path, train=False, download=True)) == 2


@pytest.mark.parametrize("failure", ["checksum", "dropped", "missing", "no_network"])
def test_failed_cifar_download_leaves_nothing(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    serve_cifar(server, monkeypatch, checksum="0" * 32 if failure == "checksum" else None)
    if failure == "dropped":
        server.drop.add("/data/" + ARCHIVE)
    if failure == "missing":
        monkeypatch.setattr(datasets, "CIFAR10_URL", f"{server.url}/elsewhere/{ARCHIVE}")
    if failure == "no_network":
        monkeypatch.setattr(datasets, "CIFAR10_URL", f"{closed_port_url()}/{ARCHIVE}")
    expected = {
        "checksum": "Expected MD5 0000",
        "dropped": "connection closed after",
        "missing": "404",
        "no_network": "by hand",
    }[failure]
    with pytest.raises(DownloadError, match=expected) as caught:
        CIFAR10(tmp_path, train=False, download=True)
    assert datasets.CIFAR10_URL in str(caught.value)
    assert isinstance(caught.value, OSError)
    assert list(tmp_path.iterdir()) == []  # no partial and no final file
    with pytest.raises(DatasetNotFoundError):
        CIFAR10(tmp_path, train=False)


def serve_mnist(server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    files = mnist_file_bytes(gz=True)
    for name, data in files.items():
        server.files[f"/mnist/{name}"] = data
        monkeypatch.setitem(datasets.MNIST_MD5, name, md5(data))
    return files


def test_mnist_download_tries_mirrors_and_skips_work_done(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = serve_mnist(server, monkeypatch)
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", (closed_port_url(), f"{server.url}/mnist/"))
    dataset = MNIST(tmp_path, train=False, download=True)
    assert len(dataset) == 3
    assert sorted(server.hits) == [
        "/mnist/t10k-images-idx3-ubyte.gz",
        "/mnist/t10k-labels-idx1-ubyte.gz",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes() == files[
        "t10k-images-idx3-ubyte.gz"
    ]
    MNIST(tmp_path, train=False, download=True)
    assert len(server.hits) == 2
    assert len(MNIST(tmp_path, train=True, download=True)) == 5
    assert len(server.hits) == 4


def test_failed_mnist_download_reports_every_mirror(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_mnist(server, monkeypatch)
    monkeypatch.setitem(datasets.MNIST_MD5, "t10k-images-idx3-ubyte.gz", "f" * 32)
    server.drop.add("/bad/t10k-images-idx3-ubyte.gz")
    server.files["/bad/t10k-images-idx3-ubyte.gz"] = b"x" * 1000
    monkeypatch.setattr(
        datasets, "MNIST_MIRRORS", (f"{server.url}/bad", f"{server.url}/mnist/", closed_port_url())
    )
    with pytest.raises(DownloadError, match="every one failed") as caught:
        MNIST(tmp_path, train=False, download=True)
    message = str(caught.value)
    assert "\n" not in message  # one line, one clause per mirror
    assert "(1) " in message and "connection closed after 500 of 1000 bytes" in message
    assert "(2) " in message and "expected ffffffff" in message
    assert "(3) " in message and "ConnectionRefusedError" in message
    assert "by hand" in message
    assert list(tmp_path.iterdir()) == []


def test_import_netlens_does_not_import_datasets() -> None:
    code = "import sys, netlens; print('netlens.datasets' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --- sizes that files declare: memory bombs ------------------------------------------------------

GiB = 1 << 30


def inflating(prefix: bytes, size: int) -> bytes:
    """One gzip stream of ``prefix`` and then ``size`` zero bytes, about ``size / 1000`` long.

    A full flush after each MiB of zeros makes every compressed MiB the same bytes, so the file
    is built by repetition in milliseconds. Its final CRC is wrong; no bounded reader gets there.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    mebibyte = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + mebibyte * (size >> 20) + compressor.flush()


def tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.GNU_FORMAT)  # sizes of 8 GiB and more in base 256


def idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def write_bombs(root: Path) -> list[str]:
    """Small files that ask for about 1 GiB each, in the layouts the readers look for."""
    bombs = {
        # a tar.gz member that inflates to 1 GiB
        "member": (ARCHIVE, inflating(tar_header(f"{FOLDER}/test_batch", GiB), GiB)),
        # a pax header that declares 1 GiB, which tarfile reads before the caller sees a member
        "pax": (ARCHIVE, inflating(tar_header("././@PaxHeader", GiB, tarfile.XHDTYPE), GiB)),
        # the official header of 10,000 digits, then 1 GiB
        "idx": ("t10k-images-idx3-ubyte.gz", inflating(idx_header(10_000, 28, 28), GiB)),
        # pickles of a few bytes: bytearray(1 GiB), a memo index that makes the C unpickler
        # allocate 2 x 8 bytes per index, a BYTEARRAY8 announcing 1 GiB
        "bytearray": ("test_batch", b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x40\x85R."),
        "memo": ("test_batch", b"\x80\x02N" + b"r" + (1 << 26).to_bytes(4, "little") + b"."),
        "bytearray8": ("test_batch", b"\x80\x05\x96" + GiB.to_bytes(8, "little") + b"."),
    }
    for name, (file, data) in bombs.items():
        folder = root / name / (FOLDER if file == "test_batch" else "")
        folder.mkdir(parents=True)
        (folder / file).write_bytes(data)
        if name == "idx":
            (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_header(10_000) + bytes(10_000))
    return list(bombs)


CHILD = """
import json, resource, sys
from pathlib import Path
from netlens import NetlensError
from netlens.datasets import CIFAR10, MNIST
root = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcomes = {}
for name in sys.argv[2:]:
    try:
        (MNIST if name == "idx" else CIFAR10)(root / name, train=False)
        outcomes[name] = "accepted"
    except NetlensError as error:
        outcomes[name] = type(error).__name__ + ": " + str(error)
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale
print(json.dumps({"outcomes": outcomes, "peak": peak}))
"""


def test_crafted_files_are_refused_within_a_memory_ceiling(tmp_path: Path) -> None:
    pytest.importorskip("resource")
    bombs = write_bombs(tmp_path)
    assert max(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file()) < 2 << 20
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), *bombs],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout)
    for name in bombs:
        assert report["outcomes"][name].startswith("NetlensValueError: "), (name, report)
    # The largest legitimate read here is the 7.8 MB the IDX header announces; before the
    # readers checked declared sizes, each of these files took more than 1 GiB.
    assert report["peak"] < 200 << 20, report


def test_archive_member_larger_than_a_batch_is_refused_unread(tmp_path: Path) -> None:
    # Only the header: the 8 GiB it declares are never read (nor present).
    (tmp_path / ARCHIVE).write_bytes(gzip.compress(tar_header(f"{FOLDER}/test_batch", 8 * GiB)))
    with pytest.raises(NetlensValueError, match="declares 8,589,934,592") as caught:
        CIFAR10(tmp_path, train=False)
    assert "at most 65,634,304 bytes" in str(caught.value)


def test_archive_header_asking_for_a_huge_block_is_refused(tmp_path: Path) -> None:
    pax = tar_header("././@PaxHeader", GiB, tarfile.XHDTYPE)
    (tmp_path / ARCHIVE).write_bytes(gzip.compress(pax))
    with pytest.raises(NetlensValueError, match="asks for a block of 1,073,741,824 bytes"):
        CIFAR10(tmp_path, train=False)


def test_archive_with_too_many_members_or_bytes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = cifar_files(2)
    extra = []
    for index in range(30):
        info = tarfile.TarInfo(f"{FOLDER}/extra_{index}")
        info.size = 1000
        extra.append(info)
    (tmp_path / ARCHIVE).write_bytes(tar_gz(files, extra))
    assert len(CIFAR10(tmp_path, train=False)) == 2
    monkeypatch.setattr(datasets, "_ARCHIVE_MAX_READS", 40)
    with pytest.raises(NetlensValueError, match="more than 40 reads"):
        CIFAR10(tmp_path, train=False)
    monkeypatch.setattr(datasets, "_ARCHIVE_MAX_READS", 10_000)
    monkeypatch.setattr(datasets, "_ARCHIVE_MAX_BYTES", 20_000)
    with pytest.raises(NetlensValueError, match="inflates to more than 20,000 bytes"):
        CIFAR10(tmp_path, train=False)


def test_batch_file_larger_than_a_batch_is_refused_unread(tmp_path: Path) -> None:
    files, _ = cifar_files(2)
    folder = write_folder(tmp_path, files)
    with (folder / "test_batch").open("r+b") as file:
        file.truncate(70_000_000)  # sparse: no 70 MB written or read
    with pytest.raises(NetlensValueError, match="the file has 70,000,000"):
        CIFAR10(tmp_path, train=False)


def crafted_pickle(kind: str) -> bytes:
    """A few bytes each, in the opcodes a crafted batch would use."""
    big = (1 << 28).to_bytes(4, "little")  # 256 MiB
    empty_array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
    return (
        b"\x80\x02"
        + {
            "bytearray": b"cbuiltins\nbytearray\nJ" + big + b"\x85R",
            "set": b"cbuiltins\nset\n]\x85R",
            "os": b"cos\nsystem\nX\x04\x00\x00\x00true\x85R",
            "shape": b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ"
            + big
            + b"\x85C\x01b\x87R",
            "dtype": b"cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R",
            "object_dtype": b"cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R",
            "scalar": b"cnumpy.core.multiarray\nscalar\n"
            + b"cnumpy\ndtype\nX\x02\x00\x00\x00i8\x89\x88\x87RC\x01x\x86R",
            "bytearray8": b"\x96" + (1 << 28).to_bytes(8, "little"),
            "newobj": b"cnumpy\ndtype\n)\x81",
            "grow_bytearray": b"\x96\x01\x00\x00\x00\x00\x00\x00\x00x(K\x01K\x02e",
            "build_list": b"]}b",
            "build_twice": empty_array
            + b"(K\x01K\x00\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88"
            + b"\x87R\x89C\x00tb(K\x01K\x00\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"
            + b"\x89C\x00tb",
        }[kind]
        + b"."
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("bytearray", "asks for builtins.bytearray"),
        ("set", "asks for builtins.set"),
        ("os", "asks for os.system"),
        ("shape", "an array of numpy.ndarray and shape (268435456,)"),
        ("dtype", "arrays of 'V8'"),
        ("object_dtype", "arrays of 'O8'"),
        ("scalar", "a scalar of dtype('int64') from bytes"),
        ("bytearray8", "corrupt or truncated"),
        ("newobj", "opcode that plain data does not need"),
        ("grow_bytearray", "adds items to a bytearray"),
        ("build_list", "sets the state of list"),
        ("build_twice", "sets the state of ndarray"),
    ],
)
def test_crafted_pickle_is_refused(tmp_path: Path, kind: str, expected: str) -> None:
    files, _ = cifar_files(2)
    files["test_batch"] = crafted_pickle(kind)
    write_folder(tmp_path, files)
    with pytest.raises(NetlensValueError) as caught:
        CIFAR10(tmp_path, train=False)
    assert expected in str(caught.value), str(caught.value)
    assert "test_batch" in str(caught.value)


def test_pickle_budgets_bound_opcodes_and_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = cifar_files(2)
    folder = write_folder(tmp_path, files)
    # the same string encoded again and again (through the memo): each call makes a copy
    encode = b"c_codecs\nencode\nq\x00X\x00\x04\x00\x00" + b"x" * 1024 + b"q\x01"
    again = b"h\x00h\x01X\x06\x00\x00\x00latin1\x86R0"
    (folder / "test_batch").write_bytes(b"\x80\x02" + encode + again * 20 + b"N.")
    monkeypatch.setattr(datasets, "_CIFAR10_BATCH_MAX_BYTES", 10_000)
    with pytest.raises(NetlensValueError, match="more than 10,000 bytes of arrays and strings"):
        CIFAR10(tmp_path, train=False)
    monkeypatch.undo()
    (folder / "test_batch").write_bytes(pickle.dumps([1] * 300, protocol=2))
    monkeypatch.setattr(datasets, "_PICKLE_MAX_OPCODES", 200)
    with pytest.raises(NetlensValueError, match="more than 200 opcodes"):
        CIFAR10(tmp_path, train=False)


def test_labels_as_numpy_integers_and_arrays_are_read(tmp_path: Path) -> None:
    pixels, labels = make_batch(3, 0)
    files, _ = cifar_files(3)
    as_scalars = [np.int64(label) for label in labels]
    files["test_batch"] = pickle.dumps({b"data": pixels, b"labels": as_scalars}, protocol=2)
    write_folder(tmp_path / "scalars", files)
    assert CIFAR10(tmp_path / "scalars", train=False).targets.tolist() == labels
    big_endian = np.array(labels, ">i8")
    files["test_batch"] = pickle.dumps({b"data": pixels, b"labels": big_endian}, protocol=2)
    write_folder(tmp_path / "array", files)
    assert CIFAR10(tmp_path / "array", train=False).targets.tolist() == labels


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((2**32 - 1, 2**32 - 1, 0), "Expected 28x28 images .* header says 4294967295x0"),
        ((2**32 - 1, 28, 28), "Expected at most 250,000 images .* header says 4,294,967,295"),
    ],
)
def test_bogus_idx_header_is_a_clear_error(
    tmp_path: Path, shape: tuple[int, ...], expected: str
) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_header(*shape)))
    with pytest.raises(NetlensValueError, match=expected) as caught:
        MNIST(tmp_path, train=False)
    assert "t10k-images-idx3-ubyte.gz" in str(caught.value)


def test_idx_counts_are_compared_before_the_images_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(inflating(idx_header(200, 28, 28), 0))
    reads: list[int] = []
    original = datasets._IdxFile.read
    monkeypatch.setattr(
        datasets._IdxFile, "read", lambda self: reads.append(self.ndim) or original(self)
    )
    with pytest.raises(NetlensValueError, match="as many labels"):
        MNIST(tmp_path, train=False)
    assert reads == []


# --- permissions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["cifar_folder", "cifar_archive", "mnist"])
def test_unreadable_file_is_a_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    files, _ = cifar_files(2)
    if layout == "cifar_folder":
        target = write_folder(tmp_path, files) / "test_batch"
    elif layout == "cifar_archive":
        target = write_archive(tmp_path, files)
    else:
        write_mnist(tmp_path)
        target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    if os.geteuid() == 0:  # root reads anything: simulate the refusal of open()
        real_open = open

        def refusing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(path) == target:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(datasets, "open", refusing_open, raising=False)
    else:
        target.chmod(0)
    reader = MNIST if layout == "mnist" else CIFAR10
    try:
        with pytest.raises(datasets.DatasetPermissionError) as caught:
            reader(tmp_path, train=False)
    finally:
        target.chmod(0o644)
    message = str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert "permission is denied" in message and str(target) in message
    assert "corrupt" not in message and "truncated" not in message


# --- downloads: deadline, local problems, modes, stale parts ------------------------------------


def test_trickling_download_meets_the_deadline(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_cifar(server, monkeypatch)
    server.trickle.add("/data/" + ARCHIVE)
    monkeypatch.setattr(datasets, "_DOWNLOAD_DEADLINE", 0.3)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"deadline of 0\.3 s") as caught:
        CIFAR10(tmp_path, train=False, download=True)
    assert time.monotonic() - started < 5  # the per-read timeout (60 s) never fired
    assert "bytes received" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_local_problem_is_reported_once_without_trying_mirrors(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_mnist(server, monkeypatch)
    monkeypatch.setattr(datasets, "MNIST_MIRRORS", (f"{server.url}/mnist/", f"{server.url}/2/"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DownloadError) as caught:
        MNIST(blocker / "mnist", train=False, download=True)
    message = str(caught.value)
    assert "is a file, not a folder" in message and "no other mirror was tried" in message
    assert "\n" not in message and message.count("not a folder") == 1
    assert server.hits == []
    # root itself a file: said at once, download or not
    for download in (False, True):
        with pytest.raises(DatasetNotFoundError, match="is a file"):
            MNIST(blocker, train=False, download=download)
        with pytest.raises(DatasetNotFoundError, match="is a file"):
            CIFAR10(blocker, train=False, download=download)
    assert server.hits == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_downloads_get_the_normal_file_mode(
    tmp_path: Path,
    server: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    umask: int,
    mode: int,
) -> None:
    serve_cifar(server, monkeypatch)
    old = os.umask(umask)
    try:
        CIFAR10(tmp_path, train=False, download=True)
    finally:
        os.umask(old)
    assert (tmp_path / ARCHIVE).stat().st_mode & 0o777 == mode  # as a plain open() would give


def test_atomic_file_syncs_before_renaming_and_keeps_the_umask_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(
        os, "replace", lambda *paths: events.append("replace") or real_replace(*paths)
    )
    old = os.umask(0o027)
    try:
        with datasets._atomic_file(tmp_path / "out.bin") as file:
            file.write(b"data")
    finally:
        os.umask(old)
    assert events[:2] == ["fsync", "replace"]  # then the folder, for the rename itself
    assert (tmp_path / "out.bin").read_bytes() == b"data"
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o640
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]
    with pytest.raises(RuntimeError), datasets._atomic_file(tmp_path / "out.bin") as file:
        file.write(b"half")
        raise RuntimeError("killed")
    assert [path.name for path in tmp_path.iterdir()] == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"data"


def test_stale_partial_files_are_removed_but_not_one_being_written(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_cifar(server, monkeypatch)
    stale = tmp_path / f".{ARCHIVE}.0123abcd.part"
    stale.write_bytes(b"x" * 1000)  # what a killed download leaves
    writing, live = datasets._create_partial(tmp_path / ARCHIVE)  # held by a live writer
    other = tmp_path / ".unrelated.part"
    other.write_bytes(b"")
    try:
        CIFAR10(tmp_path, train=False, download=True)
        assert not stale.exists()
        assert live.exists() and other.exists()
    finally:
        writing.close()
    assert datasets._remove_stale_partials(tmp_path, ARCHIVE) == [live]
