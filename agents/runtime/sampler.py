"""A distributed sampler whose position can be saved and restored exactly, at any step,
even into a different world size. No torch here.

Each epoch is one global permutation of the dataset (seeded by seed + epoch). A step
consumes the next `world_size * batch_size` indices of it; rank r takes its slice
[r*batch, (r+1)*batch). The state is just (epoch, position in the permutation), which
means the same thing whatever the world size: a checkpoint taken with 2 ranks resumes
with 1 rank at the same place in the data.
"""

from __future__ import annotations

import random
from typing import Any


class ResumableSampler:
    def __init__(self, dataset_len: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if dataset_len < batch_size * world_size:
            raise ValueError(
                f"a dataset of {dataset_len} samples cannot fill one step of "
                f"{world_size} ranks × {batch_size}"
            )
        self.dataset_len, self.batch_size = dataset_len, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.dataset_len))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[int]:
        """This rank's indices for the next step; advances the global position."""
        step = self.world_size * self.batch_size
        if self.position + step > self.dataset_len:  # drop the ragged tail, next epoch
            self.epoch += 1
            self.position = 0
            self._perm = self._permutation(self.epoch)
        start = self.position + self.rank * self.batch_size
        self.position += step
        return self._perm[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "dataset_len": self.dataset_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dataset_len"] != self.dataset_len or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for a dataset of {state['dataset_len']} samples with seed "
                f"{state['seed']}, this run has {self.dataset_len} and seed {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)
