"""Data specs for ``--data``: loading, normalisation and fitting to a model's input.

A data spec names where training/test samples come from:

- ``digits``      scikit-learn's bundled 8x8 digits (no download), a fixed
                  stratified 1437/360 split;
- ``mnist:DIR``   the MNIST IDX gzip files in DIR (the 60k training files when
                  present, else a fixed 8000/2000 split of the 10k test files);
- ``npz:FILE``    a NumPy archive with x_train, y_train, x_test, y_test.

Samples come back in the data set's own layout (digits: (8, 8), MNIST: (28, 28));
``fit_to_input`` reshapes or transposes them to whatever per-sample shape the
model's input has, so the loaders never need to know about the model.

Every problem is raised as one ``DataError`` whose message names the spec (or the
file inside it) and what is wrong, so the CLI can print it as one line.
"""
from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

_SPEC_HELP = "expected digits, mnist:DIR or npz:FILE"

# The digits split is fixed so that every run, test and benchmark sees the same
# 360 held-out samples (20 % of 1797, stratified: 36 per class).
_DIGITS_TEST_SIZE = 360
_DIGITS_SEED = 0

# When only the official t10k files are available (they are on the project's
# machines), the first 8000 images train and the last 2000 evaluate.
_MNIST_T10K_TRAIN = 8000

_MNIST_FILES = {
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
}

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


# eq=False: the fields are arrays, and the generated __eq__ would try to turn an
# elementwise array comparison into a bool; identity equality is what is wanted.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test samples of one data spec, pixel values scaled to [0, 1]."""

    spec: str              # the spec string as the user gave it
    x_train: np.ndarray    # float32, shape (N, *sample_shape); digits /16, mnist /255, npz as stored
    y_train: np.ndarray    # int64 (N,) class labels; float32 (N, ...) real targets (load_dataset's real_targets)
    x_test: np.ndarray     # float32, shape (M, *sample_shape)
    y_test: np.ndarray     # like y_train

    @property
    def num_classes(self) -> int:
        """Largest label + 1 over train and test (labels are 0-based class indices)."""
        labels = [y for y in (self.y_train, self.y_test) if y.size]
        if not labels:
            return 0
        return int(max(int(y.max()) for y in labels)) + 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def load_dataset(spec: str, real_targets: bool = False) -> Dataset:
    """Load the data set a ``--data`` spec names; ``DataError`` if it cannot be used.
    ``real_targets``: y holds real values, (N, ...) float arrays of an npz archive (``--task regress``)."""
    text = spec.strip()
    if real_targets and not text.startswith("npz:"):
        raise DataError(f"--data {spec!r}: --task regress needs real-valued targets: an npz archive whose "
                        "y_train / y_test hold them")
    if text == "digits":
        return _load_digits(spec)
    kind, sep, arg = text.partition(":")
    if sep and kind in ("mnist", "npz"):
        if not arg.strip():
            raise DataError(f"--data {spec!r}: missing {'DIR' if kind == 'mnist' else 'FILE'} after '{kind}:' ({_SPEC_HELP})")
        path = Path(arg.strip()).expanduser()
        if kind == "mnist":
            return _load_mnist(spec, path)
        return _load_npz(spec, path, real_targets)
    raise DataError(f"--data {spec!r}: unknown data spec ({_SPEC_HELP})")


def check_dataset(dataset: Dataset, classes: int | None = None) -> None:
    """``DataError`` for data no conversion can use: a split without samples, values that are not
    finite, or (given the model's number of outputs) a label the model has no output for."""
    where = f"--data {dataset.spec!r}"
    for part in ("train", "test"):
        x, y = getattr(dataset, f"x_{part}"), getattr(dataset, f"y_{part}")
        if not len(x):
            raise DataError(f"{where}: x_{part} has no samples")
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(f"{where}: x_{part} holds {bad} NaN or infinite values")
        if classes is not None and len(y) and int(y.max()) >= classes:
            raise DataError(f"{where}: y_{part} holds label {int(y.max())}, but the model has {classes} outputs "
                            f"(labels 0 to {classes - 1})")


def parse_normalize(text: str) -> tuple[float, float]:
    """Parse ``--normalize MEAN,STD`` ("0.5,0.5" -> (0.5, 0.5)); the model sees (x - MEAN) / STD."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"--normalize {text!r}: expected MEAN,STD (two numbers, e.g. 0.5,0.5)")
    try:
        mean, std = float(parts[0]), float(parts[1])
    except ValueError:
        raise DataError(f"--normalize {text!r}: expected MEAN,STD (two numbers, e.g. 0.5,0.5)") from None
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DataError(f"--normalize {text!r}: MEAN and STD must be finite numbers")
    if std <= 0:
        raise DataError(f"--normalize {text!r}: STD must be > 0")
    return mean, std


def fit_to_input(
    x: np.ndarray,
    input_shape: tuple[int, ...],
    normalize: tuple[float, float] | None,
    *,
    spec: str,
) -> np.ndarray:
    """Return ``x`` as float32 (N, *input_shape), normalised if asked.

    ``input_shape`` is the model's per-sample input shape (no batch dimension).
    A sample that is already in that shape is kept; an (H, W, C) sample is
    transposed to a (C, H, W) input and back; otherwise a sample with the same
    number of values is reshaped in C order, which is exact for the common cases
    (H, W) -> (1, H, W), (H, W) -> (H, W, 1) and (H, W) -> (H*W,), since a
    single channel does not change the memory order.
    """
    target = tuple(input_shape)
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in target):
        raise DataError(f"--data {spec!r}: the model input shape {_fmt_shape(target)} is not fully known")
    target = tuple(int(d) for d in target)
    x = np.asarray(x)
    if x.ndim < 1:
        raise DataError(f"--data {spec!r}: samples must be an array with a batch dimension")
    n = x.shape[0]
    sample = tuple(int(d) for d in x.shape[1:])

    if sample == target:
        out = x
    elif len(sample) == 3 and len(target) == 3 and sample[2] > 1 and target == (sample[2], sample[0], sample[1]):
        out = np.transpose(x, (0, 3, 1, 2))      # (H, W, C) data -> (C, H, W) model
    elif len(sample) == 3 and len(target) == 3 and sample[0] > 1 and target == (sample[1], sample[2], sample[0]):
        out = np.transpose(x, (0, 2, 3, 1))      # (C, H, W) data -> (H, W, C) model
    elif math.prod(sample) == math.prod(target):
        out = x.reshape((n, *target))
    else:
        raise DataError(
            f"--data {spec!r}: samples of shape {_fmt_shape(sample)} do not fit the model input {_fmt_shape(target)}"
        )

    out = np.ascontiguousarray(out, dtype=np.float32)
    if normalize is not None:
        mean, std = normalize
        out = ((out - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)
    return out


# ---------------------------------------------------------------- loaders


def _load_digits(spec: str) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)        # pixel values 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_DIGITS_TEST_SIZE, random_state=_DIGITS_SEED, stratify=y
    )
    return Dataset(spec, x_train, y_train, x_test, y_test)


def _load_mnist(spec: str, directory: Path) -> Dataset:
    if not directory.is_dir():
        raise DataError(f"--data {spec!r}: {directory} is not a directory")
    paths = {key: directory / name for key, name in _MNIST_FILES.items()}
    for key in ("test_images", "test_labels"):
        if not paths[key].is_file():
            raise DataError(f"--data {spec!r}: {paths[key]} not found")

    x_test = _read_idx_images(spec, paths["test_images"])
    y_test = _read_idx_labels(spec, paths["test_labels"], len(x_test), paths["test_images"])

    has_train = [paths[k].is_file() for k in ("train_images", "train_labels")]
    if all(has_train):
        x_train = _read_idx_images(spec, paths["train_images"])
        y_train = _read_idx_labels(spec, paths["train_labels"], len(x_train), paths["train_images"])
    elif any(has_train):
        missing = paths["train_labels"] if has_train[0] else paths["train_images"]
        raise DataError(f"--data {spec!r}: {missing} not found (the training files come as a pair)")
    else:
        if len(x_test) <= _MNIST_T10K_TRAIN:
            raise DataError(
                f"--data {spec!r}: {paths['test_images']} has {len(x_test)} images, "
                f"more than {_MNIST_T10K_TRAIN} are needed to split it into train and test"
            )
        x_train, y_train = x_test[:_MNIST_T10K_TRAIN], y_test[:_MNIST_T10K_TRAIN]
        x_test, y_test = x_test[_MNIST_T10K_TRAIN:], y_test[_MNIST_T10K_TRAIN:]
    return Dataset(spec, x_train, y_train, x_test, y_test)


def _read_idx(spec: str, path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX array from a gzip file (the format MNIST ships in).

    Layout: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions,
    one big-endian uint32 per dimension, then the values in C order.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) on a bad header and EOFError on a
        # truncated stream; both mean the file cannot be used.
        raise DataError(f"--data {spec!r}: {path} is not a readable gzip file ({_reason(exc)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        expected = 0x0800 | ndim
        raise DataError(f"--data {spec!r}: {path} is not an IDX file of {ndim}-d unsigned bytes (bad magic number, expected 0x{expected:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"--data {spec!r}: {path} is truncated (incomplete IDX header)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_bytes = math.prod(dims)
    if len(raw) - header != expected_bytes:
        raise DataError(
            f"--data {spec!r}: {path} holds {len(raw) - header} data bytes, "
            f"the header {_fmt_shape(dims)} promises {expected_bytes}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_images(spec: str, path: Path) -> np.ndarray:
    return (_read_idx(spec, path, 3).astype(np.float32) / np.float32(255.0))


def _read_idx_labels(spec: str, path: Path, count: int, images: Path) -> np.ndarray:
    labels = _read_idx(spec, path, 1).astype(np.int64)
    if len(labels) != count:
        raise DataError(f"--data {spec!r}: {path} has {len(labels)} labels but {images} has {count} images")
    return labels


def _load_npz(spec: str, path: Path, real_targets: bool = False) -> Dataset:
    if not path.is_file():
        raise DataError(f"--data {spec!r}: {path} not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # Corrupt zips, files that are neither .npz nor .npy, pickles (refused).
        raise DataError(f"--data {spec!r}: {path} cannot be read as .npz ({_reason(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        # np.load returns a plain array for a .npy file: there are no named parts.
        raise DataError(f"--data {spec!r}: {path} is a single array, not an .npz archive with {', '.join(_NPZ_KEYS)}")
    with archive:
        missing = [k for k in _NPZ_KEYS if k not in archive.files]
        if missing:
            raise DataError(f"--data {spec!r}: {path} lacks {', '.join(missing)} (needs {', '.join(_NPZ_KEYS)})")
        try:
            arrays = {k: archive[k] for k in _NPZ_KEYS}
        except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            # A damaged member, or an object array that would need pickle.
            raise DataError(f"--data {spec!r}: {path} cannot be read as .npz ({_reason(exc)})") from None

    out = {}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
            raise DataError(f"--data {spec!r}: {path}: x_{part} and y_{part} must hold numbers")
        if x.ndim < 2:
            raise DataError(f"--data {spec!r}: {path}: x_{part} must have shape (N, ...), got {_fmt_shape(x.shape)}")
        if (y.ndim != 1 and not real_targets) or y.ndim == 0 or len(y) != len(x):
            raise DataError(
                f"--data {spec!r}: {path}: y_{part} must have shape ({len(x)},{' ...' if real_targets else ''}) to "
                f"match x_{part}, got {_fmt_shape(y.shape)}" + ("" if real_targets else
                                                                  " (real-valued targets: --task regress)")
            )
        if real_targets and not np.all(np.isfinite(y)):
            raise DataError(f"--data {spec!r}: {path}: y_{part} holds NaN or infinite targets")
        if not real_targets and y.size and (not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y != np.round(y))):
            raise DataError(f"--data {spec!r}: {path}: y_{part} must hold non-negative integer class labels")
        out[f"x_{part}"] = x.astype(np.float32)
        out[f"y_{part}"] = y.astype(np.float32 if real_targets else np.int64)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(
            f"--data {spec!r}: {path}: x_train samples {_fmt_shape(out['x_train'].shape[1:])} "
            f"and x_test samples {_fmt_shape(out['x_test'].shape[1:])} differ in shape"
        )
    return Dataset(spec, out["x_train"], out["y_train"], out["x_test"], out["y_test"])


# ---------------------------------------------------------------- helpers


def _fmt_shape(shape: tuple[int, ...]) -> str:
    """(8, 8) -> '(8, 8)', (64,) -> '(64,)': the way Python writes tuples, read by users."""
    return str(tuple(int(d) if isinstance(d, (int, np.integer)) else d for d in shape))


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (messages must stay on one line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
