"""Samplers: seeded, resumable training order and exact, unpadded evaluation shards."""
from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start part-way (a mid-epoch checkpoint).

    The order is the parent's (a function of seed and epoch); ``set_start_index(k)`` drops this rank's
    first ``k`` indices for the current epoch only, and ``set_epoch`` clears it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start index {start_index} outside this rank's {self.num_samples} samples")
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ShardSampler(Sampler):
    """Evaluation sampler: rank ``r`` of ``w`` gets the contiguous items ``[r*n//w, (r+1)*n//w)``.

    No padding and no duplicates: every item is seen exactly once over all ranks, so metrics are
    exact; ranks may get one item more or fewer than each other. Contiguous shares keep a video's
    views together on one rank.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1):
        self.start = rank * num_items // world_size
        self.stop = (rank + 1) * num_items // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def set_epoch(self, epoch: int) -> None:
        """The order never changes; present so every sampler accepts ``set_epoch``."""
