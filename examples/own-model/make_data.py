"""Write the example's data: a few thousand rows carved from Fashion-MNIST into ``fmnist-small.npz``.

The file holds ``x_train, y_train, x_test, y_test`` (uint8 ``(N, 28, 28)`` images, integer labels), the form
``data.dataset: npz`` reads; put your own arrays in one the same way (``numpy.savez``). Fashion-MNIST is found
where kdbench looks for it (``apt-get install -y dataset-fashion-mnist``, ``$KDBENCH_DATA``, ``./data``).

Usage: python make_data.py [--train 3000] [--test 1000] [--out fmnist-small.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from kdbench.data import load_raw, stratified_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000, help="training rows (stratified sample)")
    parser.add_argument("--test", type=int, default=1000, help="test rows (stratified sample)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("fmnist-small.npz")), help="the .npz to write")
    args = parser.parse_args()
    _, train, test, _ = load_raw("fashion-mnist")
    arrays = {}
    for split, n, key in ((train, args.train, "train"), (test, args.test, "test")):
        rows, _ = stratified_split(split.labels, n, seed=0)
        arrays[f"x_{key}"] = split.images[rows, 0].numpy()  # (N, 28, 28) uint8
        arrays[f"y_{key}"] = split.labels[rows].numpy().astype(np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {len(arrays['x_train'])} training and {len(arrays['x_test'])} test images")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
