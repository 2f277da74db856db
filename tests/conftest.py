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


def _let_simulated_threads_run():
    """Make the CUDA simulator's block manager give up the GIL each time it polls a thread.

    The simulator runs a block as one Python thread per CUDA thread, and a manager thread
    polls them (is_alive, syncthreads_blocked) in a loop that never blocks. So once it holds
    the GIL, the threads it waits for (released from a syncthreads, say) get the GIL back only
    when Python's switch interval (5 ms) forces it: every barrier of the tiled GEMM cost about
    5 ms. With the manager sleeping 0 s per poll the threads run at once: one rebar step on the
    simulator took 4.6 s instead of 19.4. The threads themselves still switch every 5 ms as
    before, so the order of their atomic adds is unchanged (a 10 us switch interval, the other
    way to get this speed, reorders them, and the GPU then differs from the CPU in the last
    bits). Nothing changes where the simulator is not in use or has no BlockThread."""
    import threading
    import time
    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numba.cuda.simulator import kernel as simulated
    thread_type = getattr(simulated, "BlockThread", None)
    if thread_type is None:
        return

    def is_alive(self):
        time.sleep(0)                   # releases the GIL: a waiting simulated thread takes it
        return threading.Thread.is_alive(self)

    thread_type.is_alive = is_alive


_let_simulated_threads_run()

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


@pytest.fixture(autouse=True)
def _signal_handlers_given_back():
    """A command run in-process (CliRunner) may stop with its signal handlers still installed, as a
    real process would until it exits; give the test process its own back after every test, so that
    a later Ctrl-C reaches pytest."""
    import signal
    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    yield
    for name, handler in saved.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)
