"""Tests for whetstone_onnx.data: data specs, normalisation and fitting to a model input."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from whetstone_onnx.data import Dataset, fit_to_input, load_dataset, parse_normalize
from whetstone_onnx.errors import DataError

# Tests run from a clone whose sibling is shared/ (read-only MNIST t10k files).
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"MNIST files not in {MNIST_DIR}"
)


def write_idx(path: Path, array: np.ndarray, *, magic_ndim: int | None = None) -> None:
    """Write a uint8 array as a gzip IDX file (the format MNIST ships in)."""
    ndim = array.ndim if magic_ndim is None else magic_ndim
    header = bytes([0, 0, 0x08, ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(directory: Path, n_test: int, n_train: int = 0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    parts = [("t10k", n_test)] + ([("train", n_train)] if n_train else [])
    for prefix, n in parts:
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


# ---------------------------------------------------------------- digits


def test_digits_shapes_ranges_and_split() -> None:
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.spec == "digits"
    assert ds.x_train.shape == (1437, 8, 8) and ds.x_test.shape == (360, 8, 8)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0       # 0..16 scaled by 1/16
    assert set(np.unique(ds.x_train * 16)) <= set(range(17))
    assert ds.num_classes == 10
    assert ds.sample_shape == (8, 8)
    # Stratified: every class has 35-37 of the 360 test samples.
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_is_deterministic() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_digits_train_and_test_are_disjoint() -> None:
    ds = load_dataset("digits")
    train = {row.tobytes() for row in ds.x_train.reshape(len(ds.x_train), -1)}
    test = [row.tobytes() for row in ds.x_test.reshape(len(ds.x_test), -1)]
    # load_digits has a few duplicate images; nearly all test samples are unseen.
    assert sum(t in train for t in test) < 10


# ---------------------------------------------------------------- mnist


@needs_mnist
def test_mnist_t10k_only_split() -> None:
    ds = load_dataset(f"mnist:{MNIST_DIR}")
    assert ds.x_train.shape == (8000, 28, 28) and ds.x_test.shape == (2000, 28, 28)
    assert ds.y_train.shape == (8000,) and ds.y_test.shape == (2000,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.num_classes == 10
    # Both halves hold every class in roughly equal numbers (the file is balanced).
    assert np.bincount(ds.y_test, minlength=10).min() > 150
    # The split is images 0-7999 / 8000-9999 of the file, in file order.
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    np.testing.assert_array_equal(ds.y_train, labels[:8000])
    np.testing.assert_array_equal(ds.y_test, labels[8000:])


def test_mnist_synthetic_t10k_only(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert len(ds.x_train) == 8000 and len(ds.x_test) == 2000
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(ds.x_test, raw[8000:].astype(np.float32) / 255)


def test_mnist_with_train_files_uses_them(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=30, n_train=50)
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.x_train.shape == (50, 28, 28)
    assert ds.x_test.shape == (30, 28, 28)      # the full t10k file is the test set


def test_mnist_missing_dir() -> None:
    with pytest.raises(DataError, match="is not a directory") as err:
        load_dataset("mnist:/no/such/dir")
    assert err.value.message.startswith("--data 'mnist:/no/such/dir': ")


def test_mnist_missing_test_file(tmp_path: Path) -> None:
    spec = f"mnist:{tmp_path}"
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert err.value.message == f"--data {spec!r}: {tmp_path / 't10k-images-idx3-ubyte.gz'} not found"
    assert err.value.exit_code == 2


def test_mnist_missing_label_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz not found"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_half_a_training_pair(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000, n_train=20)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz not found \(the training files come as a pair\)"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        load_dataset(f"mnist:{tmp_path}")
    assert f"{path} is not a readable gzip file" in err.value.message
    assert "\n" not in err.value.message


def test_mnist_not_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match="is not a readable gzip file"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_bad_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    # A label file (1-d) where the 3-d image file should be.
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(10000, np.uint8))
    with pytest.raises(DataError, match=r"bad magic number, expected 0x00000803"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_short_payload(tmp_path: Path) -> None:
    # A valid gzip stream whose IDX payload is shorter than its header says.
    write_mnist(tmp_path, n_test=10000)
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10000, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(100))
    with pytest.raises(DataError, match=r"holds 100 data bytes, the header \(10000, 28, 28\) promises 7840000"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=10000)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9999, np.uint8))
    with pytest.raises(DataError, match="has 9999 labels but .* has 10000 images"):
        load_dataset(f"mnist:{tmp_path}")


def test_mnist_too_small_to_split(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_test=100)
    with pytest.raises(DataError, match="has 100 images, more than 8000 are needed"):
        load_dataset(f"mnist:{tmp_path}")


# ---------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train = rng.random((20, 4, 4, 3))                  # float64 on disk
    y_train = rng.integers(0, 3, 20).astype(np.uint8)
    x_test = rng.random((7, 4, 4, 3))
    y_test = np.array([0, 1, 2, 4, 0, 1, 2], np.int32)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}")
    assert ds.spec == f"npz:{path}"
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32))   # as stored, no scaling
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.num_classes == 5                          # max label + 1 over train and test


def test_npz_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((2, 3)), y_train=np.zeros(2))
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert f"{path} lacks x_test, y_test" in err.value.message


def test_npz_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert err.value.message == f"--data 'npz:{path}': {path} not found"


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(b"this is not numpy")
    with pytest.raises(DataError, match="cannot be read as .npz"):
        load_dataset(f"npz:{path}")


def test_npz_single_npy(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(DataError, match="is a single array, not an .npz archive"):
        load_dataset(f"npz:{path}")


def test_npz_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    obj = np.array([{"a": 1}, None], dtype=object)
    np.savez(path, x_train=obj, y_train=np.zeros(2), x_test=obj, y_test=np.zeros(2))
    with pytest.raises(DataError, match="cannot be read as .npz"):
        load_dataset(f"npz:{path}")


def test_npz_label_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((4, 2)), y_train=np.zeros(3), x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    with pytest.raises(DataError, match=r"y_train must have shape \(4,\) to match x_train, got \(3,\)"):
        load_dataset(f"npz:{path}")


def test_npz_bad_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((2, 2)), y_train=np.array([0.5, 1.0]), x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    with pytest.raises(DataError, match="y_train must hold non-negative integer class labels"):
        load_dataset(f"npz:{path}")


def test_npz_train_test_shapes_differ(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((2, 4)), y_train=np.zeros(2), x_test=np.zeros((1, 5)), y_test=np.zeros(1))
    with pytest.raises(DataError, match=r"x_train samples \(4,\) and x_test samples \(5,\) differ"):
        load_dataset(f"npz:{path}")


# ---------------------------------------------------------------- bad specs


@pytest.mark.parametrize("spec", ["foo", "", "Digits", "mnist", "npz", "cifar:/x", "digits:extra"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert err.value.message == f"--data {spec!r}: unknown data spec (expected digits, mnist:DIR or npz:FILE)"


@pytest.mark.parametrize("spec, part", [("mnist:", "DIR"), ("npz:", "FILE"), ("npz:  ", "FILE")])
def test_empty_part(spec: str, part: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(spec)
    assert err.value.message.startswith(f"--data {spec!r}: missing {part} after")


# ---------------------------------------------------------------- parse_normalize


@pytest.mark.parametrize(
    "text, expected",
    [("0.5,0.5", (0.5, 0.5)), (" 0.1307 , 0.3081 ", (0.1307, 0.3081)), ("-1,2", (-1.0, 2.0)), ("0,1e-3", (0.0, 0.001))],
)
def test_parse_normalize(text: str, expected: tuple[float, float]) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize("text", ["", "0.5", "0.5,", "a,b", "0.5,0.5,0.5", "0.5;0.5", "nan,1", "0,inf"])
def test_parse_normalize_bad_text(text: str) -> None:
    with pytest.raises(DataError) as err:
        parse_normalize(text)
    assert err.value.message.startswith(f"--normalize {text!r}: ")


@pytest.mark.parametrize("text", ["0.5,0", "0.5,-1"])
def test_parse_normalize_std_not_positive(text: str) -> None:
    with pytest.raises(DataError, match="STD must be > 0"):
        parse_normalize(text)


# ---------------------------------------------------------------- fit_to_input


@pytest.fixture()
def images() -> np.ndarray:
    return np.arange(3 * 8 * 8, dtype=np.float64).reshape(3, 8, 8) / 191


@pytest.mark.parametrize("shape", [(64,), (8, 8, 1), (1, 8, 8), (8, 8)])
def test_fit_reshape_single_channel(images: np.ndarray, shape: tuple[int, ...]) -> None:
    out = fit_to_input(images, shape, None, spec="digits")
    assert out.shape == (3, *shape) and out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    # A single channel does not change the C-order of the pixels.
    np.testing.assert_array_equal(out.reshape(3, -1), images.reshape(3, -1).astype(np.float32))


def test_fit_transposes_hwc_to_chw() -> None:
    x = np.random.default_rng(0).random((2, 4, 5, 3)).astype(np.float32)      # (H, W, C)
    out = fit_to_input(x, (3, 4, 5), None, spec="npz:x")
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out[1, 2], x[1, :, :, 2])                 # channel 2 is a plane


def test_fit_transposes_chw_to_hwc() -> None:
    x = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)      # (C, H, W)
    out = fit_to_input(x, (4, 5, 3), None, spec="npz:x")
    assert out.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out[1, :, :, 2], x[1, 2])


def test_fit_flattens_mnist() -> None:
    x = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    assert fit_to_input(x, (784,), None, spec="mnist:d").shape == (4, 784)
    assert fit_to_input(x, (1, 28, 28), None, spec="mnist:d").shape == (4, 1, 28, 28)
    assert fit_to_input(x, (28, 28, 1), None, spec="mnist:d").shape == (4, 28, 28, 1)


def test_fit_normalises(images: np.ndarray) -> None:
    out = fit_to_input(images, (1, 8, 8), (0.5, 0.5), spec="digits")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], (images - 0.5) / 0.5, atol=1e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_fit_does_not_modify_input(images: np.ndarray) -> None:
    before = images.copy()
    fit_to_input(images, (64,), (0.5, 0.25), spec="digits")
    np.testing.assert_array_equal(images, before)


def test_fit_mismatch(images: np.ndarray) -> None:
    with pytest.raises(DataError) as err:
        fit_to_input(images, (1, 28, 28), None, spec="digits")
    assert err.value.message == "--data 'digits': samples of shape (8, 8) do not fit the model input (1, 28, 28)"


def test_fit_unknown_model_dim(images: np.ndarray) -> None:
    with pytest.raises(DataError, match="is not fully known"):
        fit_to_input(images, (0, 8, 8), None, spec="digits")


def test_fit_with_real_digits() -> None:
    ds = load_dataset("digits")
    out = fit_to_input(ds.x_test, (1, 8, 8), (0.5, 0.5), spec=ds.spec)
    assert out.shape == (360, 1, 8, 8)
    assert out.min() == -1.0 and out.max() == 1.0
