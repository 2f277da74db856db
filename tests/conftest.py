"""Shared fixtures: a tiny data folder that the command line can train on in a second.

The CUDA path is tested on Numba's CUDA simulator unless REBAR_NP_REAL_CUDA=1 asks
for the real GPU: the variable must be set before Numba is first imported.
"""
import os

if os.environ.get("REBAR_NP_REAL_CUDA") != "1":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rebar_np.data import write_dataset_file  # noqa: E402

TINY_ROWS = {"train": 96, "valid": 24, "test": 24}   # 4 steps an epoch at batch 24


def write_tiny_omniglot(folder, seed=0, rows=TINY_ROWS):
    """An omniglot.h5 of a few random 28x28 binary images (non-standard sizes are allowed for Omniglot)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.5, 784)
    splits = {s: (rng.random((n, 784)) < p).astype(np.uint8) for s, n in rows.items()}
    write_dataset_file(folder / "omniglot.h5", "omniglot", splits, "packbits", {"standard_size": False})
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data folder with a tiny omniglot.h5: `--task omni --data-dir DIR` trains on it."""
    return write_tiny_omniglot(tmp_path_factory.mktemp("tiny_data"))
