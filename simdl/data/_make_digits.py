"""Regenerate ``digits.npz``: the embedded copy of scikit-learn's 8x8 handwritten digits (UCI optdigits).

Run once from the repository root (needs scikit-learn, which simdl itself never imports)::

    .venv/bin/python simdl/data/_make_digits.py

It writes ``simdl/data/digits.npz`` (compressed) with two arrays:

* ``images``: uint8 (1797, 8, 8, 1), pixel counts 0..16 (each 8x8 cell counts set pixels of a 4x4 block);
* ``labels``: uint8 (1797,), digit classes 0..9,

in scikit-learn's original sample order. The train/test split is made at load time
(``simdl.data.load_digits``).
This module is not imported by the package.
"""

from pathlib import Path

import numpy as np


def main() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
        raise ValueError("expected integer pixel counts in 0..16 from sklearn.datasets.load_digits")
    images = images.astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target).astype(np.uint8)
    out = Path(__file__).with_name("digits.npz")
    np.savez_compressed(out, images=images, labels=labels)
    print(f"wrote {out}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")


if __name__ == "__main__":
    main()
