"""Balanced Group Softmax (Li et al., CVPR 2020) with a documented logit layout.

Groups. Foreground classes are grouped by train instance count with ``bins`` as edges:
the default ``[10, 100, 1000]`` gives (0, 10), [10, 100), [100, 1000), [1000, inf). A class
with 0 train instances falls in the first group. A group without any class is a config
error (its softmax would have nothing to learn).

Layout of the (N, C + 1 + G) logits, G = number of groups including G0:

    G0: [background, any-foreground]                 columns 0, 1
    Gk: ["others_k", the group's classes by label]   k = 1 .. G - 1, one block after another

So ``num_outputs(C) = C + 1 + G`` = C + 6 with the default bins. The reference note's
"C + 1 + 4 for LVIS" counts only the four "others" logits; G0 needs one more, its
"any-foreground" logit next to the background one.

Loss = sum over groups of a softmax CE, each averaged over its own samples: G0 over all
RoIs (target 0 = background, 1 = foreground); Gk over its positive RoIs (target = the
class's position in the block) plus a random sample of "others" (background RoIs and
other groups' foreground RoIs, target 0) of size ``min(others_ratio * n_pos, available)``.
A group without positives contributes 0 and draws nothing. Draws: for each group with
positives, in group order, one ``torch.randperm(n_available)`` from a CPU generator seeded
with ``seed``; the first ``n_sample`` entries pick among the available rows in batch order.

Scores: softmax within each group; class score = p_group(class) * p_G0(foreground); the
"others" probabilities are discarded; returned as (N, C) in label order.

Classifier init (``classifier_init``). ``fresh`` (the default, the release): every row drawn
from N(0, 0.01^2) with zero bias. The release builds its wider ``fc_cls`` in the bbox head,
whose ``init_weights`` draws it so (mmdetection v1 ``BBoxHead``), and its checkpoint loader
skips the stage-1 ``fc_cls``, whose shape differs, so nothing of it is copied.
``stage1_rows``: the class rows and the background row copied from the stage-1 classifier,
only the G0 any-foreground and "others" rows drawn (this project's earlier default).

Speed: ``forward`` syncs with the host once (the per-group positive counts, which size the
CPU draws) and has no data-dependent shapes besides: one batched stable argsort orders
every group's rows as "positives, then others", each in batch order, so slices of it are
exactly the rows the documented draws refer to. The per-group cross-entropies stay one
call per group (the groups differ in width; padding them into one tensor would change the
float rounding of every value). Half-precision logits are upcast to float32 first.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acsl_cli.errors import ConfigError
from acsl_cli.losses.base import ClassificationLoss, check_labels
from acsl_cli.losses.common import counts_tensor, upcast
from acsl_cli.losses.registry import register_loss

#: Std of the normal init of new classifier rows (the release's ``fc_cls`` init).
NEW_LOGIT_STD = 0.01
#: How the stage-2 classifier starts (``classifier_init``); the first is the default.
CLASSIFIER_INITS = ("fresh", "stage1_rows")


def _bin_name(bins: Sequence[int], group: int) -> str:
    """Human-readable interval of foreground group ``group`` (1-based)."""
    low = 0 if group == 1 else bins[group - 2]
    high = "inf" if group == len(bins) + 1 else str(bins[group - 1])
    return f"({low}, {high})" if group == 1 else f"[{low}, {high})"


def assign_groups(instance_counts: Sequence[int], bins: Sequence[int]) -> list[int]:
    """Foreground group (1 .. len(bins) + 1) of each class (index = label - 1).

    Group k holds counts in [bins[k-2], bins[k-1]); group 1 is everything below bins[0].
    """
    edges = _check_bins(bins)
    counts = counts_tensor("bags", "instance_counts", instance_counts).tolist()
    return [bisect.bisect_right(edges, count) + 1 for count in counts]


def _check_bins(bins: Sequence[int]) -> list[int]:
    try:
        edges = [int(b) for b in bins]
    except (TypeError, ValueError):
        raise ConfigError(f"loss 'bags': bins must be a list of integers, got {bins!r}") from None
    increasing = all(a < b for a, b in zip(edges[:-1], edges[1:], strict=True))
    if not edges or edges[0] <= 0 or not increasing:
        raise ConfigError(
            f"loss 'bags': bins must be positive and strictly increasing, got {list(bins)}"
        )
    return edges


@register_loss("bags")
class BalancedGroupSoftmax(ClassificationLoss):
    """BAGS; the classifier width and layout are fixed by the classes' instance counts."""

    needs: ClassVar[tuple[str, ...]] = ("instance_counts",)
    seeded: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int | None = None,
        bins: Sequence[int] = (10, 100, 1000),
        others_ratio: int = 8,
        seed: int = 0,
        instance_counts: Sequence[int] | None = None,
        classifier_init: str = CLASSIFIER_INITS[0],
    ) -> None:
        super().__init__(num_classes, seed, instance_counts=instance_counts)
        assert instance_counts is not None
        if isinstance(others_ratio, bool) or int(others_ratio) != others_ratio or others_ratio < 1:
            raise ConfigError(
                f"loss 'bags': others_ratio must be a positive integer, got {others_ratio!r}"
            )
        if classifier_init not in CLASSIFIER_INITS:
            raise ConfigError(f"loss 'bags': classifier_init must be one of "
                              f"{', '.join(CLASSIFIER_INITS)}, got {classifier_init!r}")
        self.bins = _check_bins(bins)
        self.others_ratio = int(others_ratio)
        self.classifier_init = classifier_init

        groups = assign_groups(instance_counts, self.bins)
        self.num_groups = len(self.bins) + 2  # G0 plus one per bin interval
        label_group = [0] + groups
        label_column = [0] * (len(groups) + 1)
        label_local = [0] * (len(groups) + 1)
        self.group_slices: list[tuple[int, int]] = [(0, 2)]
        start = 2
        for k in range(1, self.num_groups):
            members = [label for label, g in enumerate(label_group) if label > 0 and g == k]
            if not members:
                raise ConfigError(
                    f"loss 'bags': no class has a train instance count in bin "
                    f"{_bin_name(self.bins, k)} (bins={self.bins}); change bins"
                )
            for local, label in enumerate(members, start=1):
                label_column[label] = start + local
                label_local[label] = local
            self.group_slices.append((start, start + 1 + len(members)))
            start += 1 + len(members)
        self.register_buffer("label_group", torch.tensor(label_group), persistent=False)
        self.register_buffer("label_column", torch.tensor(label_column), persistent=False)
        self.register_buffer("label_local", torch.tensor(label_local), persistent=False)

    def num_outputs(self, num_classes: int) -> int:
        if num_classes != self.num_classes:
            raise ConfigError(
                f"loss 'bags' was built for {self.num_classes} classes, asked for {num_classes}"
            )
        return num_classes + 1 + self.num_groups

    def group_of_label(self, labels: Tensor) -> Tensor:
        """Group index of each label (0 for background, 1 .. G - 1 for foreground)."""
        return self.label_group.to(labels.device)[labels]

    def others_sample_size(self, n_pos: int, n_available: int) -> int:
        """How many "others" RoIs a group with ``n_pos`` positives trains on."""
        return min(self.others_ratio * n_pos, n_available)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        assert self.num_classes is not None
        check_labels(logits, labels, self.num_outputs(self.num_classes))
        logits = upcast(logits)
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        device, n = logits.device, logits.shape[0]
        # split (not slicing) so backward assembles one gradient instead of a full-size
        # zero tensor per group
        sizes = [stop - start for start, stop in self.group_slices]
        blocks = logits.split(sizes, dim=1)
        total = F.cross_entropy(blocks[0], (labels > 0).long())
        groups = self.group_of_label(labels)
        local = self.label_local.to(device)[labels]
        # positives per group; the one host sync (bincount on CUDA would add a second)
        counts = torch.zeros(self.num_groups, dtype=torch.long, device=device)
        counts = counts.scatter_add_(0, groups, torch.ones_like(groups)).tolist()
        ks = torch.arange(1, self.num_groups, device=device)
        # row k - 1: group k's positives, then its "others", each in batch order
        orders = torch.argsort((groups[None, :] != ks[:, None]).to(torch.uint8), dim=1,
                               stable=True)
        for k in range(1, self.num_groups):
            n_pos = counts[k]
            if n_pos == 0:
                continue
            n_sample = self.others_sample_size(n_pos, n - n_pos)
            pick = torch.randperm(n - n_pos, generator=self.generator)[:n_sample]
            pos, available = orders[k - 1, :n_pos], orders[k - 1, n_pos:]
            rows = torch.cat([pos, available[pick.to(device, non_blocking=True)]])
            target = torch.cat([local[pos], local.new_zeros(n_sample)])
            total = total + F.cross_entropy(blocks[k][rows], target)
        return total

    def scores(self, logits: Tensor) -> Tensor:
        assert self.num_classes is not None
        if logits.dim() != 2 or logits.shape[1] != self.num_outputs(self.num_classes):
            raise ValueError(
                f"loss 'bags': expected (N, {self.num_outputs(self.num_classes)}) logits, "
                f"got {tuple(logits.shape)}"
            )
        logits = upcast(logits)
        probs = torch.empty_like(logits)
        for start, stop in self.group_slices:
            probs[:, start:stop] = F.softmax(logits[:, start:stop], dim=1)
        columns = self.label_column.to(logits.device)[1:]
        return probs[:, columns] * probs[:, 1:2]

    @torch.no_grad()
    def init_classifier(self, layer: nn.Linear, stage1: nn.Linear | None) -> None:
        """New layer of its own width, every row drawn from N(0, 0.01^2) (the global
        generator) with zero bias; ``stage1_rows`` then copies the class rows and the
        background row from the stage-1 (C + 1)-way classifier (when there is one)."""
        assert self.num_classes is not None
        width = self.num_outputs(self.num_classes)
        if layer.out_features != width:
            raise ValueError(
                f"loss 'bags': classifier has {layer.out_features} outputs, needs {width}"
            )
        nn.init.normal_(layer.weight, std=NEW_LOGIT_STD)
        nn.init.zeros_(layer.bias)
        if stage1 is None or self.classifier_init == "fresh":
            return
        if stage1.out_features != self.num_classes + 1 or stage1.in_features != layer.in_features:
            raise ValueError(
                f"loss 'bags': stage-1 classifier is {tuple(stage1.weight.shape)}, expected "
                f"({self.num_classes + 1}, {layer.in_features})"
            )
        columns = self.label_column.to(layer.weight.device)  # [0] = background -> column 0
        layer.weight[columns] = stage1.weight.to(layer.weight)
        layer.bias[columns] = stage1.bias.to(layer.bias)
