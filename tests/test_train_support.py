"""A small learnable segmentation set for the trainer tests (imported by the other
test_train_* modules), and a check that it is what they assume."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def one_thread():
    """Run a test with one intra-op thread: on 2 cores shared with other jobs, two
    OpenMP threads spin against each other and run many times slower than one.
    (Import this fixture into a test module to apply it there.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Squares(Dataset):
    """(image float32 (3,S,S), label int64 (S,S)) pairs: noise with two squares whose
    colour gives their class (1..3), background 0, the top two rows ignored (255).
    Items are mirrored at random (torch RNG) and jittered (numpy RNG), so they exercise
    the trainer's per-sample seeding."""

    def __init__(self, n: int = 24, size: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            image = torch.randn(3, size, size, generator=g) * 0.3
            label = torch.zeros(size, size, dtype=torch.int64)
            for _ in range(2):
                c = int(torch.randint(1, NUM_CLASSES, (1,), generator=g))
                x0, y0 = (int(v) for v in torch.randint(0, size - size // 3, (2,), generator=g))
                s = int(torch.randint(size // 6, size // 3, (1,), generator=g))
                colour = torch.tensor([c == 1, c == 2, c == 3], dtype=torch.float32) * 2 - 1
                image[:, y0:y0 + s, x0:x0 + s] = colour[:, None, None]
                label[y0:y0 + s, x0:x0 + s] = c
            label[:2] = 255
            self.items.append((image, label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, label = self.items[index]
        image = image + float(np.random.uniform(-0.05, 0.05))
        if torch.rand(()) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def test_squares_labels_follow_colours():
    ds = Squares(4)
    for image, label in (ds.items[i] for i in range(4)):
        assert image.shape == (3, 64, 64) and label.dtype == torch.int64
        assert (label[:2] == 255).all()
        for c in (1, 2, 3):
            mask = label == c
            if mask.any():
                assert torch.allclose(image[c - 1][mask], torch.ones(()))
