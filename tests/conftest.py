import numpy as np
import pytest
import torch

from dsod_core.data.sample import Sample


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One torch intra-op thread for a module (``pytest.mark.usefixtures``): the test machine's
    2 cores are shared with other jobs; there, two intra-op threads spin-wait on each other
    and the model tests ran 3x slower in wall time than with one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_sample(
    i: int,
    channels: int,
    *,
    split: str = "train",
    n_boxes: int = 2,
    size=(20, 24),
    rng: np.random.Generator | None = None,
) -> Sample:
    """A random canonical sample for tests (boxes inside the image)."""
    rng = rng or np.random.default_rng(i)
    h, w = size
    x1 = rng.uniform(0, w / 2, n_boxes)
    y1 = rng.uniform(0, h / 2, n_boxes)
    boxes = np.stack(
        [x1, y1, x1 + rng.uniform(1, w / 2, n_boxes), y1 + rng.uniform(1, h / 2, n_boxes)], 1
    )
    return Sample(
        image=rng.normal(size=(channels, h, w)).astype(np.float32) * (i + 1),
        boxes=boxes,
        labels=rng.integers(1, 4, n_boxes),
        difficult=rng.random(n_boxes) < 0.3,
        sample_id=f"s{i}",
        source=f"/data/s{i}.png",
        split=split,
        affine=np.diag([2.0, 3.0, 1.0, 1.0]),
        meta={"i": i},
    )
