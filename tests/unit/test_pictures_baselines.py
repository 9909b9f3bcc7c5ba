"""Pictures are written as real PNGs; the independent-pixel baseline equals its closed form."""
import math

import numpy as np
import pytest

from pipelines.baselines import independent_pixel_bits_per_dim
from pipelines.pictures import image_grid, save_image_grid, save_likelihood_plot, save_text_samples


def test_baseline_matches_hand_computation():
    train = np.array([[0, 1], [0, 1], [1, 1]])
    test = np.array([[0, 0]])
    # dim 0: counts (2+1, 1+1) -> p(0) = 3/5; dim 1: counts (0+1, 3+1) -> p(0) = 1/5
    expected = -(math.log(3 / 5) + math.log(1 / 5)) / (2 * math.log(2))
    assert independent_pixel_bits_per_dim(train, test, 2) == pytest.approx(expected)


def test_grid_layout_and_png_files(tmp_path):
    grid = image_grid(np.zeros((5, 4, 3, 1)), ncols=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 4 + 1, 1)
    png = save_image_grid(np.random.uniform(-1, 1, (6, 8, 8, 1)), tmp_path / "g.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = {"unit": "dim", "rows": [{"steps": 10, "bits_per_dim": 2.0, "bits_se_examples": 0.1},
                                     {"steps": None, "bits_per_dim": 1.5, "bits_se_examples": 0.05}]}
    assert save_likelihood_plot(table, tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
    txt = save_text_samples(np.array([[1, 2, 0], [26, 0, 1]]), tmp_path / "s.txt", " abcdefghijklmnopqrstuvwxyz")
    assert txt.read_text() == "ab \nz a\n"
