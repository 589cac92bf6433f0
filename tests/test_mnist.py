import gzip
import hashlib
import importlib.resources

import keras
import numpy as np
import pytest

from transferkit.datasets import mnist


def idx_bytes(array):
    """Encodes a uint8 array in the IDX format of the MNIST files."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, data, gzipped):
    folder.mkdir(exist_ok=True)
    for key, stem in mnist.IDX_FILES.items():
        content = idx_bytes(getattr(data, key))
        if gzipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / stem).write_bytes(content)


@pytest.fixture(scope="module")
def sample():
    return mnist.load_sample()


def small(data, train=40, test=20):
    return mnist.MnistData(
        data.x_train[:train],
        data.y_train[:train],
        data.x_test[:test],
        data.y_test[:test],
        source="test",
    )


def test_the_shipped_sample_is_the_documented_file(sample):
    resource = importlib.resources.files("transferkit.datasets") / mnist.SAMPLE_FILE
    digest = hashlib.sha256(resource.read_bytes()).hexdigest()
    readme = (
        importlib.resources.files("transferkit.datasets") / "README.md"
    ).read_text()
    assert digest in readme
    assert sample.x_train.shape == (8000, 28, 28) and sample.x_train.dtype == np.uint8
    assert sample.x_test.shape == (2000, 28, 28)
    np.testing.assert_array_equal(
        np.bincount(sample.y_test), [217, 245, 186, 204, 191, 184, 203, 188, 189, 193]
    )
    assert sample.is_sample and "sample" in sample.source


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gzip"])
def test_an_idx_folder_loads_the_same_arrays(tmp_path, sample, gzipped):
    expected = small(sample)
    write_idx_folder(tmp_path, expected, gzipped)

    data = mnist.load(tmp_path)

    for key in mnist.IDX_FILES:
        np.testing.assert_array_equal(getattr(data, key), getattr(expected, key))
    assert data.source == str(tmp_path) and not data.is_sample


def test_a_keras_layout_npz_loads(tmp_path, sample):
    expected = small(sample)
    path = tmp_path / "mnist.npz"
    np.savez(path, **{key: getattr(expected, key) for key in mnist.IDX_FILES})

    data = mnist.load(path)

    np.testing.assert_array_equal(data.x_test, expected.x_test)
    np.testing.assert_array_equal(data.y_train, expected.y_train)


def test_without_a_network_the_sample_is_used_with_a_notice(monkeypatch):
    def offline():
        raise Exception(
            "URL fetch failure on https://example: Name or service not known"
        )

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)

    data = mnist.load()

    assert data.is_sample
    assert "Could not download MNIST (URL fetch failure" in data.notice
    assert "not comparable to the full-set 99.2%" in data.notice
    assert "--data PATH" in data.notice
    assert len(data.notice.splitlines()) == 1


def test_a_download_is_used_when_it_works(monkeypatch, sample):
    downloaded = small(sample)
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: (
            (downloaded.x_train, downloaded.y_train),
            (downloaded.x_test, downloaded.y_test),
        ),
    )
    data = mnist.load()
    assert data.source == "keras.datasets.mnist" and data.notice is None
    np.testing.assert_array_equal(data.x_train, downloaded.x_train)


def test_missing_paths_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No MNIST data at"):
        mnist.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="has no train-images-idx3-ubyte"):
        mnist.load(tmp_path)


def test_an_npz_without_the_keras_arrays_is_rejected(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match=r"lacks the arrays \['x_test', 'x_train'"):
        mnist.load(path)


def test_a_truncated_npz_is_rejected(tmp_path, sample):
    path = tmp_path / "mnist.npz"
    np.savez(path, **{key: getattr(small(sample), key) for key in mnist.IDX_FILES})
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="mnist.npz"):
        mnist.load(path)


def test_images_of_the_wrong_shape_are_rejected(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.zeros((3, 32, 32)),
        y_train=np.zeros(3),
        x_test=np.zeros((1, 28, 28)),
        y_test=np.zeros(1),
    )
    with pytest.raises(ValueError, match=r"shape \(n, 28, 28\).*shape=\(3, 32, 32\)"):
        mnist.load(path)


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"PK\x03\x04whatever")
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(path)
    path.write_bytes(idx_bytes(np.zeros((4, 28, 28)))[:-10])
    with pytest.raises(ValueError, match="truncated or padded"):
        mnist.read_idx(path)
    path.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(ValueError, match="unknown IDX type code 0x42"):
        mnist.read_idx(path)
