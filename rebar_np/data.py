"""Data sets for rebar-np: loading with verification, and one-off importers.

Every data set is one HDF5 file in the data directory, ``data_dir()``
($REBAR_NP_DATA_DIR if set, else the repository's ``data/`` folder):

=====================  ======================================================
binarized_mnist.h5     shipped in the repository; built by ``data/prepare.py``
                       from the Larochelle & Murray ``.amat`` text files
mnist_grey.h5          made on the user's machine by ``import_mnist_grey``
                       (``rebar-np data import mnist-grey DIR``) or
                       ``download_mnist_grey``; used for dynamic binarization
omniglot.h5            made on the user's machine by ``import_omniglot``
                       (``rebar-np data import omniglot chardata.mat``)
=====================  ======================================================

File layout (``format_version`` 1)
----------------------------------
Root attributes:
    dataset         "binarized_mnist", "mnist_grey" or "omniglot"
    format_version  1
    source          free text saying where the numbers came from
    omniglot only:  seed, shuffle_seed (-1 = same generator as seed), n_valid,
                    standard_size (True when the source had the canonical
                    24,345 + 8,070 images and n_valid was 1,345),
                    source_sha256 (of the imported .mat file)

One HDF5 dataset per split, ``/train``, ``/valid`` and ``/test``: uint8,
chunked by up to 4,096 rows, shuffle + gzip filters (level 9 for "packbits",
4 for "uint8"), no timestamps (so a rebuild is byte-identical), with attributes
    encoding  "packbits": 0/1 images stored as (N, 98) bytes,
                          ``np.packbits(x, axis=1)`` (big-endian bit order:
                          pixel 0 is the top bit of byte 0)
              "uint8":    grey levels 0..255 stored as (N, 784)
    n_rows    N
    sha256    hex SHA-256 of the *decoded* (N, 784) uint8 array in C order
              (0/1 values for "packbits", 0..255 for "uint8")

Images are 28 x 28, flattened row-major: pixel index = 28 * row + col.

Verification on load
--------------------
``load_split`` decodes the split, recomputes its SHA-256 and compares it with
the file's ``sha256`` attribute.  For binarized_mnist and mnist_grey the row
count and SHA-256 must also equal constants in this module (``EXPECTED``).
Omniglot is imported from a user-supplied file, so no constant is possible:
its checksum is checked against the attribute written at import time, and the
row counts against 23,000 / 1,345 / 8,070 when ``standard_size`` is set,
otherwise against the file's own ``n_rows`` attributes (small test files).
Every failure raises ``DataError`` with a one-line message naming the file
and the command that fixes it.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import h5py
import numpy as np

from .training.checkpoint import atomic_h5

FORMAT_VERSION = 1
N_PIXELS = 784
SPLITS = ("train", "valid", "test")
DATASETS = ("binarized_mnist", "mnist_grey", "omniglot")
FILES = {name: f"{name}.h5" for name in DATASETS}
TASK_DATASET = {"sbn": "binarized_mnist", "sp": "binarized_mnist", "omni": "omniglot"}

# What to tell the user when a data set's file is missing or bad.
REMEDY = {
    "binarized_mnist": "restore the shipped file (`git checkout -- data/binarized_mnist.h5`)"
                       " or rebuild it with `rebar-np data prepare`",
    "mnist_grey": "run `rebar-np data download mnist-grey`"
                  " or `rebar-np data import mnist-grey DIR`",
    "omniglot": "run `rebar-np data import omniglot PATH/TO/chardata.mat`",
}

# (rows, SHA-256 of the decoded (rows, 784) uint8 array) per split.
EXPECTED = {
    "binarized_mnist": {
        "train": (50000, "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a"),
        "valid": (10000, "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e"),
        "test": (10000, "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86"),
    },
    "mnist_grey": {
        "train": (50000, "c80ceb24eedca80f31cfca280b8fb911cbb41b9990f998bebd40e26b1ab6d0f8"),
        "valid": (10000, "2b079632b0defaf508a5ebf8c4ac1e18ce15c8b337da087e9c3e1c84c618d244"),
        "test": (10000, "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"),
    },
}
OMNIGLOT_ROWS = {"train": 23000, "valid": 1345, "test": 8070}

# Binarized MNIST text files: one image per line, 784 `0`/`1` separated by spaces.
AMAT_FILES = {s: f"binarized_mnist_{s}.amat" for s in SPLITS}

# Grey MNIST IDX files and the MD5 of their *uncompressed* contents.
DEFAULT_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_IMAGE_FILES = {
    "train-images-idx3-ubyte.gz": ("6bbc9ace898e44ae57da46a324031adb", 60000),
    "t10k-images-idx3-ubyte.gz": ("2646ac647ad5339dbf082846283269ea", 10000),
}
MNIST_N_TRAIN = 50000  # training images 0..49,999 -> train, the rest -> valid


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be (one-line message)."""


def _fail(path, problem, remedy=""):
    """Raise DataError("PATH: problem; remedy") on one line."""
    msg = f"{path}: {problem}" + (f"; {remedy}" if remedy else "")
    raise DataError(" ".join(msg.split("\n"))) from None  # no h5py/OS traceback chained


def _first_line(err):
    """First line of an exception's text, for embedding in a one-line message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# --------------------------------------------------------------------------- paths


def data_dir() -> Path:
    """$REBAR_NP_DATA_DIR if set, else the repository's data/ folder."""
    env = os.environ.get("REBAR_NP_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "data"


def _resolve_dir(directory) -> Path:
    """The given directory, or data_dir() when None."""
    return Path(directory) if directory is not None else data_dir()


def dataset_path(dataset: str, directory=None) -> Path:
    """Path of a data set's HDF5 file in `directory` (default data_dir())."""
    _check_dataset(dataset)
    return _resolve_dir(directory) / FILES[dataset]


def _check_dataset(dataset):
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")


def _check_split(split):
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------- checksums


def array_sha256(x: np.ndarray) -> str:
    """Hex SHA-256 of a uint8 array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.uint8).tobytes()).hexdigest()


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        _fail(path, f"cannot read file ({_first_line(e)})")
    return h.hexdigest()


# --------------------------------------------------------------------------- HDF5 writing


def write_dataset_file(path, dataset, splits, encoding, attrs=None) -> Path:
    """Write {split: uint8 (N, 784)} to `path` in the layout of the module docstring.

    encoding is "packbits" (0/1 images) or "uint8" (grey levels).  The file is
    built in memory, written to a temporary file in the same folder and then moved into place
    (training/checkpoint.py:atomic_h5): a full disk is one DataError line, the old file intact.
    """
    path = Path(path)
    try:
        with atomic_h5(path) as f:
            f.attrs["dataset"] = dataset
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for split in SPLITS:
                _write_split(f, split, splits[split], encoding)
    except OSError as e:
        _fail(path, f"cannot write the data file ({_first_line(e)})", "free space or choose another --data-dir")
    return path


def _umask():
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_split(f, split, x, encoding):
    """Store one (N, 784) uint8 split with its encoding, n_rows and sha256 attributes."""
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != N_PIXELS:
        raise ValueError(f"{split}: expected shape (N, {N_PIXELS}), got {x.shape}")
    if encoding == "packbits":
        if x.max(initial=0) > 1:
            raise ValueError(f"{split}: packbits encoding needs 0/1 values")
        stored = np.packbits(x, axis=1)
    elif encoding == "uint8":
        stored = x
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    chunks = (max(1, min(len(stored), 4096)), stored.shape[1])
    level = 9 if encoding == "packbits" else 4  # level 9 is ~25x slower on grey levels, 5% smaller
    ds = f.create_dataset(split, data=stored, chunks=chunks, compression="gzip",
                          compression_opts=level, shuffle=True, track_times=False)
    ds.attrs["encoding"] = encoding
    ds.attrs["n_rows"] = len(x)
    ds.attrs["sha256"] = array_sha256(x)


# --------------------------------------------------------------------------- HDF5 reading


def _read_split_uint8(dataset, split, directory=None):
    """Decoded, verified uint8 (N, 784) array of one split (see module docstring)."""
    return read_split_file(dataset_path(dataset, directory), dataset, split)


def read_split_file(path, dataset, split) -> np.ndarray:
    """Decoded uint8 (N, 784) array of one split of the `dataset` file at `path`,
    verified as described in the module docstring."""
    _check_dataset(dataset)
    _check_split(split)
    path = Path(path)
    remedy = REMEDY[dataset]
    if not path.is_file():
        _fail(path, f"{dataset} data file not found", remedy)
    try:
        with h5py.File(path, "r") as f:
            root = dict(f.attrs)
            if root.get("dataset") != dataset or root.get("format_version") != FORMAT_VERSION:
                _fail(path, f"not a rebar-np {dataset} file (format_version {FORMAT_VERSION})",
                      remedy)
            if split not in f:
                _fail(path, f"has no {split!r} split", remedy)
            ds = f[split]
            encoding, n_rows = ds.attrs.get("encoding"), ds.attrs.get("n_rows")
            stored_sha = ds.attrs.get("sha256")
            if encoding not in ("packbits", "uint8") or n_rows is None or stored_sha is None:
                _fail(path, f"{split} split lacks its encoding/n_rows/sha256 attributes", remedy)
            width = N_PIXELS // 8 if encoding == "packbits" else N_PIXELS
            if ds.dtype != np.uint8 or ds.shape != (int(n_rows), width):
                _fail(path, f"{split} split has shape {ds.shape} {ds.dtype}, expected "
                      f"({int(n_rows)}, {width}) uint8", remedy)
            stored = ds[()]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        _fail(path, f"unreadable HDF5 file, truncated or corrupted ({_first_line(e)})", remedy)
    if encoding == "packbits":
        x = np.unpackbits(stored, axis=1, count=N_PIXELS)
    else:
        x = stored
    sha = array_sha256(x)
    if sha != stored_sha:
        _fail(path, f"{split} split fails its checksum (data corrupted)", remedy)
    _check_expected(path, dataset, split, x, sha, root)
    return x


def _check_expected(path, dataset, split, x, sha, root):
    """Compare a decoded split with the hard-coded row counts and checksums."""
    remedy = REMEDY[dataset]
    if dataset in EXPECTED:
        rows, want_sha = EXPECTED[dataset][split]
    elif bool(root.get("standard_size", False)):
        rows, want_sha = OMNIGLOT_ROWS[split], None
    else:
        rows, want_sha = len(x), None
    if x.shape != (rows, N_PIXELS):
        _fail(path, f"{split} split has {x.shape[0]} rows, expected {rows}", remedy)
    if want_sha is not None and sha != want_sha:
        _fail(path, f"{split} split differs from the canonical {dataset} "
              f"(sha256 {sha[:16]}..., expected {want_sha[:16]}...)", remedy)


# --------------------------------------------------------------------------- public loaders


def load_split(dataset: str, split: str, data_dir=None) -> np.ndarray:
    """float32 (N, 784) images of one split: 0/1 for binary sets, grey levels in [0, 1]
    for mnist_grey.  Verified as described in the module docstring."""
    x = _read_split_uint8(dataset, split, data_dir)
    if dataset == "mnist_grey":
        return x.astype(np.float32) / np.float32(255)
    return x.astype(np.float32)


def task_dataset(task: str) -> str:
    """Data set used by a task: sbn, sp -> binarized_mnist; omni -> omniglot."""
    if task not in TASK_DATASET:
        raise DataError(f"unknown task {task!r}: choose one of {', '.join(TASK_DATASET)}")
    return TASK_DATASET[task]


def load_task(task: str, data_dir=None, binarization: str = "fixed") -> dict:
    """{"train", "valid", "test"} float32 arrays for a task.

    binarization "fixed" gives the binary data set; "dynamic" (MNIST tasks only)
    gives the mnist_grey grey levels for training, to be resampled with `binarize`
    every epoch, and the fixed binarized validation and test sets, as the REBAR
    TF reference does (so bounds stay comparable across the two settings).
    """
    dataset = task_dataset(task)
    if binarization == "dynamic":
        if dataset != "binarized_mnist":
            raise DataError(f"dynamic binarization is only available for MNIST tasks, not {task!r}")
        return {"train": load_split("mnist_grey", "train", data_dir),
                **{split: load_split(dataset, split, data_dir) for split in ("valid", "test")}}
    elif binarization != "fixed":
        raise DataError(f"unknown binarization {binarization!r}: choose 'fixed' or 'dynamic'")
    return {split: load_split(dataset, split, data_dir) for split in SPLITS}


def binarize(grey: np.ndarray, rng) -> np.ndarray:
    """One binary sample of grey-level images: float32 (rng.random(shape) < grey)."""
    return (rng.random(grey.shape) < grey).astype(np.float32)


def dataset_info(data_dir=None) -> list:
    """One dict per known data set: name, path, present, shapes, ok, error, remedy."""
    info = []
    for name in DATASETS:
        path = dataset_path(name, data_dir)
        entry = {"name": name, "path": str(path), "present": path.is_file(),
                 "shapes": {}, "ok": False, "error": None, "remedy": REMEDY[name]}
        try:
            for split in SPLITS:
                entry["shapes"][split] = tuple(_read_split_uint8(name, split, data_dir).shape)
            entry["ok"] = True
        except DataError as e:
            entry["error"] = str(e)
        info.append(entry)
    return info


# --------------------------------------------------------------------------- binarized MNIST


def read_amat(path) -> np.ndarray:
    """uint8 (N, 784) 0/1 array from a binarized-MNIST .amat text file
    (one image per line, 784 values `0` or `1` separated by whitespace)."""
    remedy = "use the original binarized_mnist_*.amat files"
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        _fail(path, f"cannot read ({_first_line(e)})", remedy)
    rows = []
    for lineno, line in enumerate(text.split(b"\n"), start=1):
        tokens = line.split()
        if not tokens:
            continue
        joined = b"".join(tokens)
        if len(tokens) != N_PIXELS or len(joined) != N_PIXELS:
            _fail(path, f"line {lineno} has {len(tokens)} values, expected {N_PIXELS} "
                  "single-character 0/1 values", remedy)
        rows.append(joined)
    x = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, N_PIXELS) - ord("0")
    if x.size and x.max() > 1:  # uint8 wrap-around turns characters below '0' into large values
        _fail(path, "contains values other than 0 and 1", remedy)
    return x


def prepare_binarized_mnist(raw_dir, out_path) -> Path:
    """Build binarized_mnist.h5 (packbits encoding) from the three .amat files in raw_dir.

    Checks the row counts and that the data are the canonical ones (EXPECTED).
    """
    raw_dir, out_path = Path(raw_dir), Path(out_path)
    splits = {}
    for split in SPLITS:
        path = raw_dir / AMAT_FILES[split]
        if not path.is_file():
            _fail(path, "not found", "pass the folder holding binarized_mnist_{train,valid,test}.amat")
        x = read_amat(path)
        rows, sha = EXPECTED["binarized_mnist"][split]
        if x.shape[0] != rows:
            _fail(path, f"has {x.shape[0]} images, expected {rows}", "use the original file")
        if array_sha256(x) != sha:
            _fail(path, "differs from the canonical binarized MNIST (checksum)", "use the original file")
        splits[split] = x
    source = ("binarized MNIST, fixed binarization of Larochelle & Murray (2011), "
              "from binarized_mnist_{train,valid,test}.amat")
    return write_dataset_file(out_path, "binarized_mnist", splits, "packbits", {"source": source})


# --------------------------------------------------------------------------- grey MNIST


def _find_raw_file(raw_dir, name):
    """raw_dir/name, or its uncompressed twin (name without .gz) if only that exists."""
    path = Path(raw_dir) / name
    plain = path.with_suffix("")
    if not path.is_file() and plain.is_file():
        return plain
    return path


def read_idx_images(path, expected_md5=None) -> np.ndarray:
    """uint8 (N, 28, 28) from an IDX image file (gzip or not).

    IDX: 2 zero bytes, type byte 0x08 (unsigned byte), ndim byte 3, then ndim
    big-endian uint32 sizes, then the pixels.  `expected_md5` is that of the
    uncompressed bytes.
    """
    remedy = "download it again (`rebar-np data download mnist-grey`)"
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        _fail(path, "not found", remedy)
    except (OSError, EOFError, zlib.error) as e:
        _fail(path, f"cannot read or decompress ({_first_line(e)})", remedy)
    if not raw:
        _fail(path, "is empty (0 bytes), expected a gzip-compressed IDX image file", remedy)
    if len(raw) < 16 or raw[:2] != b"\0\0":
        _fail(path, "not an IDX file (bad magic number)", remedy)
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08 or ndim != 3:
        _fail(path, f"IDX magic 0x{raw[:4].hex()} is not an unsigned-byte image file "
              "(expected 0x00000803)", remedy)
    dims = struct.unpack(">3I", raw[4:16])
    if dims[1:] != (28, 28):
        _fail(path, f"images are {dims[1]}x{dims[2]}, expected 28x28", remedy)
    if len(raw) != 16 + dims[0] * 28 * 28:
        _fail(path, f"truncated or padded: {len(raw)} bytes, header says {16 + dims[0] * 784}", remedy)
    if expected_md5 is not None:
        md5 = hashlib.md5(raw).hexdigest()
        if md5 != expected_md5:
            _fail(path, f"MD5 of uncompressed data is {md5}, expected {expected_md5}", remedy)
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(dims)


def import_mnist_grey(raw_dir, data_dir=None) -> Path:
    """Write mnist_grey.h5 (uint8 grey levels) from the MNIST IDX image files in raw_dir.

    train = training images 0..49,999, valid = 50,000..59,999, test = t10k.
    """
    if not Path(raw_dir).is_dir():
        _fail(raw_dir, f"is not a folder; expected the folder holding {' and '.join(MNIST_IMAGE_FILES)}")
    images = {}
    for name, (md5, count) in MNIST_IMAGE_FILES.items():
        path = _find_raw_file(raw_dir, name)
        x = read_idx_images(path, md5).reshape(-1, N_PIXELS)
        if len(x) != count:  # unreachable when the MD5 matches; kept for clarity
            _fail(path, f"has {len(x)} images, expected {count}")
        images[name] = x
    train = images["train-images-idx3-ubyte.gz"]
    splits = {"train": train[:MNIST_N_TRAIN], "valid": train[MNIST_N_TRAIN:],
              "test": images["t10k-images-idx3-ubyte.gz"]}
    source = ("MNIST grey levels (LeCun et al.), train-images 0-49999 / 50000-59999 / "
              "t10k-images, from the IDX files")
    out = dataset_path("mnist_grey", data_dir)
    return write_dataset_file(out, "mnist_grey", splits, "uint8", {"source": source})


def download_mnist_grey(url_base=DEFAULT_MNIST_URL, dest_dir=None, data_dir=None) -> Path:
    """Download the two MNIST image files from url_base (http(s) or file://) into
    dest_dir (a temporary folder if None), verify their MD5s, then import_mnist_grey."""
    if dest_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return download_mnist_grey(url_base, tmp, data_dir)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name, (md5, _) in MNIST_IMAGE_FILES.items():
        dest = dest_dir / name
        url = url_base.rstrip("/") + "/" + name
        _download(url, dest)
        try:
            read_idx_images(dest, md5)
        except DataError as e:
            dest.unlink()
            raise DataError(f"downloaded {url} is bad ({e})") from None
    return import_mnist_grey(dest_dir, data_dir)


def _download(url, dest):
    """Fetch url into dest atomically (temporary file + rename)."""
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:  # URLError is an OSError
        _fail(url, f"download failed ({_first_line(e)})",
              "check the URL, or fetch the files by hand and run `rebar-np data import mnist-grey DIR`")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------- Omniglot


def colmajor_to_rowmajor(columns: np.ndarray) -> np.ndarray:
    """(784, N) images stored column-major (MATLAB) -> (N, 784) row-major rows.

    Column v holds pixel (r, c) at v[r + 28 c]; the result holds it at 28 r + c,
    i.e. each row is v.reshape(28, 28, order="F").ravel().
    """
    n = columns.shape[1]
    return np.ascontiguousarray(columns.T.reshape(n, 28, 28).transpose(0, 2, 1).reshape(n, N_PIXELS))


def read_omniglot_mat(mat_path):
    """(data, testdata) float arrays, each (784, N) as in MATLAB, from chardata.mat.

    Reads MATLAB v5/v7 files with scipy.io.loadmat and v7.3 (HDF5) files with
    h5py; h5py sees MATLAB matrices transposed, so those are transposed back.
    """
    remedy = "pass the IWAE chardata.mat (`rebar-np data import omniglot PATH`)"
    path = Path(mat_path)
    if path.is_dir():
        _fail(path, "is a folder, expected the file chardata.mat", remedy)
    if not path.is_file():
        _fail(path, "not found", remedy)
    if path.stat().st_size == 0:
        _fail(path, "is empty (0 bytes), expected a MATLAB .mat file with fields 'data' and 'testdata'", remedy)
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                arrays = [np.asarray(f[key][()]).T for key in ("data", "testdata")]
        else:
            import scipy.io
            mat = scipy.io.loadmat(path, variable_names=["data", "testdata"])
            arrays = [np.asarray(mat[key]) for key in ("data", "testdata")]
    except KeyError as e:
        _fail(path, f"has no field {_first_line(e)} (need 'data' and 'testdata')", remedy)
    except Exception as e:  # noqa: BLE001 - scipy's and h5py's parsers raise many types (MatReadError, ...)
        _fail(path, f"not a readable MATLAB file ({_first_line(e)}); expected a .mat file with fields 'data' and "
              "'testdata'", remedy)
    for key, a in zip(("data", "testdata"), arrays):
        if a.ndim != 2 or a.shape[0] != N_PIXELS or a.shape[1] == 0:
            _fail(path, f"field {key!r} has shape {a.shape}, expected (784, N)", remedy)
        if not np.issubdtype(a.dtype, np.number) or not np.all((a >= 0) & (a <= 1)):
            _fail(path, f"field {key!r} has values outside [0, 1]", remedy)
    return arrays[0], arrays[1]


def import_omniglot(mat_path, data_dir=None, seed=0, n_valid=1345, shuffle_seed=None) -> Path:
    """Write omniglot.h5 (packbits) from the IWAE chardata.mat.

    Grey levels are cast to float32, converted to row-major rows, and binarized
    once with rng = np.random.RandomState(seed): first all `data` images
    (rng.random_sample((N_train, 784)) < grey), then all `testdata` images.
    The training rows are then permuted with rng.permutation(N_train) (or
    RandomState(shuffle_seed).permutation when shuffle_seed is given); the last
    n_valid rows of the permuted set are the validation split.
    seed=5, shuffle_seed=123 reproduces the REBAR TensorFlow reference exactly.
    """
    train_cols, test_cols = read_omniglot_mat(mat_path)
    n_train = train_cols.shape[1]
    if not 0 < n_valid < n_train:
        _fail(mat_path, f"n_valid={n_valid} must be between 1 and {n_train - 1}")
    train = colmajor_to_rowmajor(train_cols.astype(np.float32))
    test = colmajor_to_rowmajor(test_cols.astype(np.float32))
    rng = np.random.RandomState(seed)
    train_bin = (rng.random_sample(train.shape) < train).astype(np.uint8)
    test_bin = (rng.random_sample(test.shape) < test).astype(np.uint8)
    shuffle_rng = rng if shuffle_seed is None else np.random.RandomState(shuffle_seed)
    train_bin = train_bin[shuffle_rng.permutation(n_train)]
    splits = {"train": train_bin[:-n_valid], "valid": train_bin[-n_valid:], "test": test_bin}
    standard = (n_train == 24345 and len(test) == 8070 and n_valid == OMNIGLOT_ROWS["valid"])
    attrs = {
        "source": "Omniglot 28x28 (IWAE chardata.mat), binarized once, see rebar_np.data",
        "seed": int(seed),
        "shuffle_seed": -1 if shuffle_seed is None else int(shuffle_seed),
        "n_valid": int(n_valid),
        "standard_size": bool(standard),
        "source_sha256": file_sha256(mat_path),
    }
    out = dataset_path("omniglot", data_dir)
    return write_dataset_file(out, "omniglot", splits, "packbits", attrs)
