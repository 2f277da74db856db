"""Tests of rebar_np.data: the shipped binarized MNIST, corruption handling, importers."""
import gzip
import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from rebar_np import data as D

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED = REPO_DATA / "binarized_mnist.h5"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason=f"raw data folder {SHARED} is absent (CI has it)")

README_MEANS = {"train": 0.130562, "valid": 0.131127, "test": 0.132512}
README_AMAT_SHA16 = {"train": "ad693b29f94c1427", "valid": "1de3d397c40fe8ee", "test": "e6687bfea3f820c1"}


def assert_one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip()
    for w in words:
        assert w in msg, (w, msg)


# --------------------------------------------------------------------------- shipped binarized MNIST


def test_dynamic_binarization_trains_on_grey_and_evaluates_on_the_fixed_sets(grey_dir):
    import shutil
    shutil.copy(D.data_dir() / "binarized_mnist.h5", grey_dir / "binarized_mnist.h5")
    d = D.load_task("sbn", grey_dir, binarization="dynamic")
    assert len(np.unique(d["train"][:50])) > 2                      # grey levels
    for split in ("valid", "test"):                                  # the standard binarized sets
        np.testing.assert_array_equal(d[split], D.load_split("binarized_mnist", split))


@needs_shared
@pytest.mark.parametrize("split", D.SPLITS)
def test_shipped_file_is_bit_identical_to_amat(split):
    amat = SHARED / f"binarized_mnist_{split}.amat"
    assert D.file_sha256(amat)[:16] == README_AMAT_SHA16[split]
    raw = np.fromfile(amat, dtype=np.uint8).reshape(-1, 2 * 784)  # "v v v ... v\n"
    assert (raw[:, 1:-1:2] == ord(" ")).all() and (raw[:, -1] == ord("\n")).all()
    expected = raw[:, ::2] - ord("0")
    x = D.load_split("binarized_mnist", split, REPO_DATA)
    assert x.dtype == np.float32 and x.shape == expected.shape
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("split", D.SPLITS)
def test_shipped_mean_pixels_match_readme(split):
    x = D.load_split("binarized_mnist", split, REPO_DATA)
    assert set(np.unique(x)) == {0.0, 1.0}
    assert abs(x.mean(dtype=np.float64) - README_MEANS[split]) < 1e-6


@needs_shared
def test_prepare_reproduces_shipped_file(tmp_path):
    out = D.prepare_binarized_mnist(SHARED, tmp_path / "binarized_mnist.h5")
    assert D.file_sha256(out) == D.file_sha256(SHIPPED)  # deterministic and up to date
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_read_amat_parses_and_rejects(tmp_path):
    rows = np.random.RandomState(0).randint(0, 2, size=(3, 784)).astype(np.uint8)
    good = tmp_path / "good.amat"
    good.write_text("".join(" ".join(map(str, r)) + " \r\n" for r in rows))  # odd whitespace is fine
    np.testing.assert_array_equal(D.read_amat(good), rows)
    bad_value = tmp_path / "two.amat"
    bad_value.write_text(" ".join(["2"] * 784) + "\n")
    with pytest.raises(D.DataError) as e:
        D.read_amat(bad_value)
    assert_one_line_error(e, "two.amat", "0 and 1")
    short = tmp_path / "short.amat"
    short.write_text(" ".join(["1"] * 783) + "\n")
    with pytest.raises(D.DataError) as e:
        D.read_amat(short)
    assert_one_line_error(e, "short.amat", "783")


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def shipped_copy(tmp_path):
    dest = tmp_path / "binarized_mnist.h5"
    shutil.copyfile(SHIPPED, dest)
    return dest


def test_truncated_file(shipped_copy):
    size = shipped_copy.stat().st_size
    with open(shipped_copy, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "train", shipped_copy.parent)
    assert_one_line_error(e, str(shipped_copy), "rebar-np data prepare")


def test_flipped_byte_in_data(shipped_copy):
    with h5py.File(shipped_copy, "r") as f:
        info = f["train"].id.get_chunk_info(0)
    with open(shipped_copy, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "train", shipped_copy.parent)
    assert_one_line_error(e, str(shipped_copy))
    # the other splits are untouched and still load
    assert D.load_split("binarized_mnist", "test", shipped_copy.parent).shape == (10000, 784)


def test_changed_data_fails_checksum(shipped_copy):
    with h5py.File(shipped_copy, "r+") as f:
        f["valid"][0, 0] ^= 1  # rewritten through HDF5: decodes fine, stale sha256 attribute
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "valid", shipped_copy.parent)
    assert_one_line_error(e, "checksum", "valid")


def test_missing_file(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "train", tmp_path)
    assert_one_line_error(e, str(tmp_path / "binarized_mnist.h5"), "not found", "rebar-np data prepare")
    with pytest.raises(D.DataError) as e:
        D.load_task("omni", tmp_path)
    assert_one_line_error(e, "omniglot.h5", "rebar-np data import omniglot")


def test_wrong_shape_file(tmp_path):
    small = {s: np.zeros((100, 784), np.uint8) for s in D.SPLITS}
    D.write_dataset_file(tmp_path / "binarized_mnist.h5", "binarized_mnist", small, "packbits")
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "train", tmp_path)
    assert_one_line_error(e, "100 rows", "50000")


def test_wrong_kind_of_file(tmp_path):
    with h5py.File(tmp_path / "binarized_mnist.h5", "w") as f:
        f["train"] = np.zeros((3, 3))
    with pytest.raises(D.DataError) as e:
        D.load_split("binarized_mnist", "train", tmp_path)
    assert_one_line_error(e, "not a rebar-np binarized_mnist file")
    (tmp_path / "mnist_grey.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(D.DataError) as e:
        D.load_split("mnist_grey", "train", tmp_path)
    assert_one_line_error(e, "mnist_grey.h5", "rebar-np data download mnist-grey")


def test_failed_write_keeps_old_file(shipped_copy):
    before = D.file_sha256(shipped_copy)
    bad = {s: np.full((4, 784), 2, np.uint8) for s in D.SPLITS}  # not 0/1: packbits refuses
    with pytest.raises(ValueError):
        D.write_dataset_file(shipped_copy, "binarized_mnist", bad, "packbits")
    assert D.file_sha256(shipped_copy) == before
    assert list(shipped_copy.parent.iterdir()) == [shipped_copy]


# --------------------------------------------------------------------------- small API


def test_names_and_defaults(tmp_path, monkeypatch):
    assert [D.task_dataset(t) for t in ("sbn", "sp", "omni")] == ["binarized_mnist"] * 2 + ["omniglot"]
    for call in (lambda: D.task_dataset("cifar"), lambda: D.load_split("cifar", "train"),
                 lambda: D.load_split("binarized_mnist", "dev"),
                 lambda: D.load_task("sbn", binarization="sometimes"),
                 lambda: D.load_task("omni", binarization="dynamic")):
        with pytest.raises(D.DataError) as e:
            call()
        assert_one_line_error(e)
    monkeypatch.delenv("REBAR_NP_DATA_DIR", raising=False)
    assert D.data_dir() == REPO_DATA
    monkeypatch.setenv("REBAR_NP_DATA_DIR", str(tmp_path))
    assert D.data_dir() == tmp_path
    with pytest.raises(D.DataError):  # the env var is honoured by the loader
        D.load_split("binarized_mnist", "test")


def test_load_task_fixed():
    d = D.load_task("sp", REPO_DATA)
    assert {k: v.shape for k, v in d.items()} == {"train": (50000, 784), "valid": (10000, 784),
                                                 "test": (10000, 784)}


def test_binarize():
    grey = np.tile(np.linspace(0, 1, 5, dtype=np.float32), (20000, 1))
    b = D.binarize(grey, np.random.default_rng(0))
    assert b.dtype == np.float32 and set(np.unique(b)) == {0.0, 1.0}
    np.testing.assert_allclose(b.mean(axis=0), [0, 0.25, 0.5, 0.75, 1], atol=0.02)
    assert b[:, 0].max() == 0 and b[:, -1].min() == 1


def test_dataset_info(shipped_copy):
    info = {row["name"]: row for row in D.dataset_info(shipped_copy.parent)}
    assert set(info) == set(D.DATASETS)
    bm = info["binarized_mnist"]
    assert bm["present"] and bm["ok"] and bm["error"] is None
    assert bm["shapes"] == {"train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}
    assert not info["omniglot"]["present"] and not info["omniglot"]["ok"]
    assert "not found" in info["omniglot"]["error"]
    with open(shipped_copy, "r+b") as f:
        f.truncate(1000)
    bm = {row["name"]: row for row in D.dataset_info(shipped_copy.parent)}["binarized_mnist"]
    assert bm["present"] and not bm["ok"] and "\n" not in bm["error"]


# --------------------------------------------------------------------------- grey MNIST


def idx_images(path):
    raw = gzip.decompress(Path(path).read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)


@pytest.fixture(scope="module")
def grey_dir(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.skip(f"raw data folder {SHARED} is absent (CI has it)")
    out = tmp_path_factory.mktemp("grey")
    assert D.import_mnist_grey(SHARED, out) == out / "mnist_grey.h5"
    return out


def test_import_mnist_grey(grey_dir):
    d = {s: D.load_split("mnist_grey", s, grey_dir) for s in D.SPLITS}
    assert {k: v.shape for k, v in d.items()} == {"train": (50000, 784), "valid": (10000, 784),
                                                 "test": (10000, 784)}
    for x in d.values():
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    train_raw = idx_images(SHARED / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(np.rint(d["valid"] * 255), train_raw[50000:])
    np.testing.assert_array_equal(np.rint(d["test"][:100] * 255),
                                  idx_images(SHARED / "t10k-images-idx3-ubyte.gz")[:100])


@needs_shared
def test_mnist_grey_bad_md5_and_bad_header(tmp_path):
    raw = bytearray(gzip.decompress((SHARED / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[16 + 400] ^= 1  # one pixel
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    shutil.copy(SHARED / "train-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(D.DataError) as e:
        D.import_mnist_grey(tmp_path, tmp_path)
    assert_one_line_error(e, "t10k-images-idx3-ubyte.gz", "MD5")
    assert not (tmp_path / "mnist_grey.h5").exists()
    shutil.copy(SHARED / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(D.DataError) as e:
        D.import_mnist_grey(tmp_path, tmp_path)
    assert_one_line_error(e, "0x00000801")


def test_download_mnist_grey_file_url(grey_dir, tmp_path):
    raw_dir = tmp_path / "raw"
    out = D.download_mnist_grey(SHARED.as_uri(), raw_dir, data_dir=tmp_path)
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(D.MNIST_IMAGE_FILES)
    assert out == tmp_path / "mnist_grey.h5"
    np.testing.assert_array_equal(D.load_split("mnist_grey", "valid", tmp_path),
                                  D.load_split("mnist_grey", "valid", grey_dir))
    with pytest.raises(D.DataError) as e:
        D.download_mnist_grey((tmp_path / "nowhere").as_uri(), tmp_path / "raw2", data_dir=tmp_path)
    assert_one_line_error(e, "download failed")


# --------------------------------------------------------------------------- Omniglot

N_TRAIN, N_TEST, N_VALID = 60, 20, 10


def known_image():
    """An asymmetric 28x28 0/1 image: a bar on row 3 and a bar on column 20 (rows 10-15)."""
    img = np.zeros((28, 28), np.uint8)
    img[3, :] = 1
    img[10:16, 20] = 1
    return img


@pytest.fixture(scope="module")
def omni_mat(tmp_path_factory):
    """A small chardata.mat: 0/1 training images, grey test images with known_image() first."""
    rng = np.random.RandomState(42)
    train_rows = rng.randint(0, 2, size=(N_TRAIN, 784)).astype(np.float64)  # row-major images
    test_rows = rng.random_sample((N_TEST, 784))
    test_rows[0] = known_image().ravel()
    to_cols = lambda rows: np.stack([r.reshape(28, 28).ravel(order="F") for r in rows], axis=1)
    path = tmp_path_factory.mktemp("omni_raw") / "chardata.mat"
    scipy.io.savemat(path, {"data": to_cols(train_rows), "testdata": to_cols(test_rows),
                            "target": np.zeros((50, N_TRAIN))})
    return path, train_rows, test_rows


def test_colmajor_to_rowmajor():
    img = known_image()
    cols = np.stack([img.ravel(order="F"), img.T.ravel(order="F")], axis=1)
    rows = D.colmajor_to_rowmajor(cols)
    np.testing.assert_array_equal(rows[0], img.ravel())
    np.testing.assert_array_equal(rows[1], img.T.ravel())
    assert rows[0, 3 * 28 + 27] == 1 and rows[0, 27 * 28 + 3] == 0


def test_import_omniglot_layout_and_load(omni_mat, tmp_path):
    path, train_rows, _ = omni_mat
    assert D.import_omniglot(path, tmp_path, n_valid=N_VALID) == tmp_path / "omniglot.h5"
    d = D.load_task("omni", tmp_path)
    assert {k: v.shape for k, v in d.items()} == {"train": (N_TRAIN - N_VALID, 784),
                                                 "valid": (N_VALID, 784), "test": (N_TEST, 784)}
    assert all(v.dtype == np.float32 and set(np.unique(v)) <= {0.0, 1.0} for v in d.values())
    np.testing.assert_array_equal(d["test"][0], known_image().ravel())  # column- to row-major
    # exact 0/1 training images pass binarization unchanged; train + valid = a permutation of them
    both = np.concatenate([d["train"], d["valid"]])
    key = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(key(both), key(train_rows.astype(np.float32)))
    assert not np.array_equal(both, train_rows)  # ... but shuffled
    with h5py.File(tmp_path / "omniglot.h5", "r") as f:
        assert f.attrs["seed"] == 0 and f.attrs["n_valid"] == N_VALID and not f.attrs["standard_size"]
        assert f.attrs["source_sha256"] == D.file_sha256(path)


def reference_split(train_rows, test_rows, n_valid):
    """The REBAR TF reference: np.random.seed(5) binarization, RandomState(123) permutation."""
    rng = np.random.RandomState(5)
    train = rng.rand(*train_rows.shape) < train_rows.astype(np.float32)
    test = rng.rand(*test_rows.shape) < test_rows.astype(np.float32)
    train = train[np.random.RandomState(123).permutation(len(train))]
    return train[:-n_valid], train[-n_valid:], test


def test_import_omniglot_seeds(omni_mat, tmp_path):
    path, train_rows, test_rows = omni_mat
    load = lambda p: {s: D.load_split("omniglot", s, p) for s in D.SPLITS}
    a, b, c, r = (tmp_path / n for n in "abcr")
    D.import_omniglot(path, a, seed=3, n_valid=N_VALID)
    D.import_omniglot(path, b, seed=3, n_valid=N_VALID)
    D.import_omniglot(path, c, seed=4, n_valid=N_VALID)
    assert D.file_sha256(a / "omniglot.h5") == D.file_sha256(b / "omniglot.h5")
    da, dc = load(a), load(c)
    assert not np.array_equal(da["test"], dc["test"])  # grey test images: new binarization
    assert not np.array_equal(da["valid"], dc["valid"])  # new permutation
    D.import_omniglot(path, r, seed=5, shuffle_seed=123, n_valid=N_VALID)
    for got, want in zip(load(r).values(), reference_split(train_rows, test_rows, N_VALID)):
        np.testing.assert_array_equal(got, want)


def test_import_omniglot_v73_hdf5(omni_mat, tmp_path):
    path, _, _ = omni_mat
    mat = scipy.io.loadmat(path)
    v73 = tmp_path / "chardata_v73.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:  # MATLAB v7.3 layout: matrices transposed
        f["data"] = mat["data"].T
        f["testdata"] = mat["testdata"].T
    D.import_omniglot(path, tmp_path / "v5", n_valid=N_VALID)
    D.import_omniglot(v73, tmp_path / "v73", n_valid=N_VALID)
    for s in D.SPLITS:
        np.testing.assert_array_equal(D.load_split("omniglot", s, tmp_path / "v5"),
                                      D.load_split("omniglot", s, tmp_path / "v73"))


def test_import_omniglot_rejects_bad_input(omni_mat, tmp_path):
    path, _, _ = omni_mat
    mat = scipy.io.loadmat(path)
    cases = {
        "grey_out_of_range": ({"data": mat["data"] * 2, "testdata": mat["testdata"]}, "outside [0, 1]"),
        "no_testdata": ({"data": mat["data"]}, "testdata"),
        "wrong_rows": ({"data": mat["data"][:783], "testdata": mat["testdata"]}, "(783, 60)"),
    }
    for name, (fields, words) in cases.items():
        bad = tmp_path / f"{name}.mat"
        scipy.io.savemat(bad, fields)
        with pytest.raises(D.DataError) as e:
            D.import_omniglot(bad, tmp_path, n_valid=N_VALID)
        assert_one_line_error(e, bad.name, words)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"MATLAB? no" * 20)
    for p, n_valid in ((junk, N_VALID), (tmp_path / "absent.mat", N_VALID), (path, N_TRAIN)):
        with pytest.raises(D.DataError) as e:
            D.import_omniglot(p, tmp_path, n_valid=n_valid)
        assert_one_line_error(e, p.name)
    assert not (tmp_path / "omniglot.h5").exists()


def test_omniglot_checksum_from_attributes(omni_mat, tmp_path):
    path, _, _ = omni_mat
    D.import_omniglot(path, tmp_path, n_valid=N_VALID)
    with h5py.File(tmp_path / "omniglot.h5", "r+") as f:
        f["test"][0, 0] ^= 0x80
    with pytest.raises(D.DataError) as e:
        D.load_split("omniglot", "test", tmp_path)
    assert_one_line_error(e, "omniglot.h5", "checksum", "rebar-np data import omniglot")
    with h5py.File(tmp_path / "omniglot.h5", "r+") as f:
        f.attrs["standard_size"] = True  # a full-size import must have the canonical row counts
    with pytest.raises(D.DataError) as e:
        D.load_split("omniglot", "valid", tmp_path)
    assert_one_line_error(e, f"{N_VALID} rows", "1345")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="needs a file-size limit (POSIX)")
def test_a_data_file_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path):
    """A write past the file-size limit fails as a full disk does (SIGXFSZ ignored: the write returns
    EFBIG). The file is built in memory and written in one plain write, so the error is one DataError
    line naming the file, the old file stays and no temporary is left (HDF5 writing the file itself
    raised from its close, with its own text)."""
    import resource
    import signal
    rng = np.random.default_rng(0)
    splits = {s: (rng.random((4000, 784)) < 0.3).astype(np.uint8) for s in ("train", "valid", "test")}
    path = tmp_path / "omniglot.h5"
    path.write_bytes(b"the old file")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))         # about a third of the file
    try:
        with pytest.raises(D.DataError) as err:
            D.write_dataset_file(path, "omniglot", splits, "packbits", {"standard_size": False})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot write the data file") and "\n" not in message, message
    assert path.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["omniglot.h5"]
