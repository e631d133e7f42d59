"""Writes examples/data/digits-uint8.npz, the stand-in for "your data" of the example card:
scikit-learn's 1,797 8x8 digits as uint8 images (levels 0..16 scaled to 0..255) with labels.

    python examples/make_data.py
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
images = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
out = Path(__file__).parent / "data" / "digits-uint8.npz"
out.parent.mkdir(exist_ok=True)
np.savez_compressed(out, images=images, labels=digits.target.astype(np.int64))
print(f"wrote {out}: {images.shape} uint8, {len(set(digits.target))} classes")
