"""What an attribution object learns about path rows of one shape across calls: their memory cost, the chunk size
that runs fastest on a CPU, and the memory of the last call's points.

None of this changes a result beyond rounding; it makes repeated calls on rows of the same shapes cheaper.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from .chunking import Chunking

#: A smaller chunk size is kept when it runs at least this much faster per row, timed over this many calls.
SPEED_GAIN = 0.05
SPEED_TRIALS = 3
#: Chunks are not made smaller than this for speed (per-chunk overhead dominates below it).
SPEED_MIN_ROWS = 16
#: The memory of a fixed rule's chunk points is kept for the next call on rows of the same shapes up to this size
#: (it is never more than a chunk's share of the memory budget).
POINTS_KEPT_BYTES = 64 * 2**20
#: Row shapes whose measured cost and chunk size an attribution object remembers (the most recent ones).
ROW_SHAPES_KEPT = 32


@dataclass
class RowShapeMemory:
    """What earlier calls learned about path rows of one shape, under one memory budget: their memory cost, the chunk
    size that ran fastest, and the memory of the last call's points.

    Past a size, bigger chunks run slower per row on a CPU: their activations no longer fit the caches, and large
    allocations cost page faults. Once calls run unmetered, the size they ran at is compared with half of it: calls
    alternate between the two until each has run ``SPEED_TRIALS`` times (the very first unmetered call, in a process
    still warming up, is not compared), and the half is kept when its fastest call
    was at least ``SPEED_GAIN`` faster per row than the other's (alternating keeps a trend in the machine's speed,
    such as a process warming up, from favouring either). Halving goes on while it is, down to ``SPEED_MIN_ROWS``
    rows or one step of the batch; at the first size that is not, the best size is kept for good. Only CPU calls
    sized by a budget take part (a CUDA call's wall time is not its kernels' time).
    """

    row_cost: float | None = None
    cap: int | None = None
    best_cap: int | None = None
    candidate: int | None = None
    settled: bool = False
    rates: dict = field(default_factory=dict)
    point_buffers: list | None = None
    #: The cap the current call was given (its chunks may be smaller: rows are spread evenly over them).
    asked: int | None = None
    copy_points: bool = False

    def apply(self, chunking: Chunking) -> None:
        chunking.row_cost = self.row_cost
        chunking.speed_cap = self.asked = self.cap
        chunking.point_buffers, self.point_buffers = self.point_buffers, None
        chunking.copy_points = chunking.copy_points or self.copy_points

    def learn(self, chunking: Chunking, device: torch.device) -> None:
        if chunking.row_cost:
            self.row_cost = chunking.row_cost
        self.copy_points = chunking.copy_points
        # The chunk points' memory is kept for the next call while it is small: a fresh allocation that large is
        # often handed out as new pages, each mapped on first touch, which costs as much as a small model's layer.
        buffers = chunking.point_buffers
        if buffers is not None:
            held = sum(b.numel() * b.element_size() for b in buffers if b is not None)
            if held <= POINTS_KEPT_BYTES:
                self.point_buffers = buffers
            chunking.point_buffers = None
        stats = chunking.stats
        if self.settled or chunking.budget is None or device.type != "cpu" or stats["metered"] or not stats["rows"]:
            return
        step = stats["step"] or 1
        if self.best_cap is None:
            # The size the budget gives is the first best. This call's time is not compared: the first calls of a
            # process (new buffers, pages touched for the first time) are slower, which would favour the half.
            self.best_cap = stats["chunk_rows"]
            self._propose(step)
            return
        size = self.asked
        if size not in (self.best_cap, self.candidate) or stats["rows"] < size:
            return  # a call too small to use the size it was given says nothing about it
        self.rates.setdefault(size, []).append(stats["seconds"] / stats["rows"])
        best, half = self.rates.get(self.best_cap, []), self.rates.get(self.candidate, [])
        if len(best) >= SPEED_TRIALS and len(half) >= SPEED_TRIALS:
            if min(half) < min(best) * (1 - SPEED_GAIN):
                self.best_cap = self.candidate
                self.rates = {}
                self._propose(step)
            else:
                self.settled, self.cap, self.rates = True, self.best_cap, {}
                return
        if not self.settled:
            # The size with fewer timed calls runs next; on a tie, the one that did not just run.
            best, half = self.rates.get(self.best_cap, []), self.rates.get(self.candidate, [])
            fewer = len(half) < len(best) or (len(half) == len(best) and size != self.candidate)
            self.cap = self.candidate if fewer else self.best_cap

    def _propose(self, step: int) -> None:
        """Half the best size as the next candidate, or settle where it would be too small."""
        half = self.best_cap // 2 - (self.best_cap // 2) % step
        if half >= max(step, SPEED_MIN_ROWS):
            self.candidate = self.cap = half
        else:
            self.settled, self.cap, self.candidate = True, self.best_cap, None


class RowShapes:
    """The :class:`RowShapeMemory` of each row shape an attribution object has seen, the most recent ones kept.

    Calls on one object may run in several threads at once: each call takes its shape's memory out while it runs
    (``checkout``) and puts it back afterwards (``checkin``), so no two calls share one.
    """

    def __init__(self) -> None:
        self._memories: dict[tuple, RowShapeMemory] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._memories)

    def values(self) -> list[RowShapeMemory]:
        with self._lock:
            return list(self._memories.values())

    def checkout(self, key: tuple) -> RowShapeMemory:
        with self._lock:
            return self._memories.pop(key, None) or RowShapeMemory()

    def checkin(self, key: tuple, memory: RowShapeMemory) -> None:
        with self._lock:
            self._memories[key] = memory
            while len(self._memories) > ROW_SHAPES_KEPT:
                self._memories.pop(next(iter(self._memories)))
