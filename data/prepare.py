"""Rebuild data/binarized_mnist.h5 from the canonical binarized-MNIST .amat text files.

    python data/prepare.py [--raw-dir ../shared/data] [--out data/binarized_mnist.h5]

The .amat files (binarized_mnist_{train,valid,test}.amat, one image per line,
784 space-separated 0/1 values) are parsed, checked against the SHA-256
constants in rebar_np/data.py, and written bit-packed to HDF5 (format in the
docstring of rebar_np/data.py).  The written file is read back and verified.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from rebar_np.data import (SPLITS, DataError, file_sha256,  # noqa: E402
                           prepare_binarized_mnist, read_split_file)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw-dir", default=str(ROOT.parent / "shared" / "data"),
                    help="folder with the three .amat files (default: ../shared/data)")
    ap.add_argument("--out", default=str(ROOT / "data" / "binarized_mnist.h5"),
                    help="output file (default: data/binarized_mnist.h5)")
    args = ap.parse_args()
    try:
        out = prepare_binarized_mnist(args.raw_dir, args.out)
        for split in SPLITS:
            x = read_split_file(out, "binarized_mnist", split)
            print(f"{split}: {x.shape[0]} x {x.shape[1]}, mean pixel {x.mean(dtype='float64'):.6f}")
    except DataError as e:
        sys.exit(f"Error: {e}")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB, sha256 {file_sha256(out)})")


if __name__ == "__main__":
    main()
