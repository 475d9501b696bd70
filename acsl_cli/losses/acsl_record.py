"""ACSL's suppression record (the paper's Figure 3 on real runs), kept cheap.

Per foreground RoI of class k, +1 on cell (k, j) of a (W, W) int64 matrix for every column
j != k where W = 1, and +1 on the RoI count of k (W = C + 1; row and column 0 are the
background's, and a background RoI only adds to ``rois[0]`` on CPU). Counting every call
in place would cost a handful of small whole-tensor ops per training iteration, and on a
busy multi-threaded CPU each op can wait for a descheduled thread; so on CPU a call only
hands over the flat indices of its suppressed entries (which the loss has computed
anyway), and they are added to the matrix in one go (``flush``) when they pile up past
``PENDING_LIMIT`` entries or when the counts are read. The counts read are exactly those
of adding each call at once. On accelerators the dense form adds in place, sync-free.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

PENDING_LIMIT = 1 << 22  # flat indices waiting (32 MiB of int64) before a flush


class Record:
    """The (W, W) counts and (W,) RoIs, with the CPU's pending batches."""

    def __init__(self, counts: Tensor, rois: Tensor) -> None:
        self._counts, self.rois = counts, rois
        self._pending: list[tuple[Tensor, Tensor]] = []  # (flat indices, their rows' labels)
        self._pending_size = 0

    @classmethod
    def zeros(cls, width: int, device: torch.device) -> Record:
        return cls(torch.zeros(width, width, dtype=torch.int64, device=device),
                   torch.zeros(width, dtype=torch.int64, device=device))

    @property
    def width(self) -> int:
        return self.rois.numel()

    @property
    def counts(self) -> Tensor:
        """The counts with every pending batch added."""
        self.flush()
        return self._counts

    def __iter__(self) -> Iterator[Tensor]:  # counts, rois = record
        return iter((self.counts, self.rois))

    def __getitem__(self, index: int) -> Tensor:
        return (self.counts, self.rois)[index]

    def to(self, device: torch.device) -> Record:
        return Record(self.counts.to(device), self.rois.to(device))

    def add_rois(self, labels: Tensor) -> None:
        self.rois.index_add_(0, labels, torch.ones_like(labels))

    def defer(self, flat: Tensor, row_labels: Tensor) -> None:
        """Count later the entries at ``flat`` (row-major indices into a (len(row_labels),
        W) matrix whose rows have ``row_labels``); rows labelled 0 are left out."""
        self._pending.append((flat, row_labels.clone()))  # the caller may reuse its labels
        self._pending_size += flat.numel() + row_labels.numel()
        if self._pending_size > PENDING_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Add the pending batches to the counts: a few ops for all of them together."""
        if not self._pending:
            return
        width = self.width
        flats, labels = zip(*self._pending, strict=True)
        self._pending, self._pending_size = [], 0
        rows = torch.tensor([lab.numel() for lab in labels], dtype=torch.int64)
        first_row = (rows.cumsum(0) - rows).to(self.rois.device)  # of each batch, overall
        sizes = torch.tensor([f.numel() for f in flats], device=self.rois.device)
        flat = torch.cat(flats) + torch.repeat_interleave(first_row * width, sizes)
        row = torch.div(flat, width, rounding_mode="floor")
        label = torch.cat(labels)[row]
        cells = (flat + (label - row) * width)[label > 0]  # label * width + column
        self._counts.view(-1).index_add_(0, cells, torch.ones_like(cells))


def record_dense(record: Record, labels: Tensor, suppressed: Tensor) -> None:
    """Add a batch's (N, W) bool off-target W at once: tensor ops only, no host sync."""
    record.counts.index_add_(0, labels, suppressed.to(torch.int64))
    record.add_rois(labels)


def record_flat(record: Record, labels: Tensor, kept: Tensor) -> None:
    """A batch (CPU) from the flat indices of its kept off-target entries, all rows."""
    record.add_rois(labels)
    record.defer(kept, labels)


def record_rows(record: Record, labels: Tensor, drop: Tensor) -> None:
    """A batch (CPU) from an (N, W) bool mask that is False exactly where a foreground row
    has W = 1 off target: only the foreground rows are read."""
    record.add_rois(labels)
    fg = labels.nonzero().squeeze(1)
    flat = drop.index_select(0, fg).logical_not_().view(-1).nonzero().squeeze(1)
    record.defer(flat, labels[fg])
