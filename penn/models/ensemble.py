"""Several trained networks of one architecture whose class probabilities are averaged.

penn.run fine-tunes ``model.finetune.members`` copies of the pretrained network, each on its
own patch stream, and saves them as one :class:`Ensemble` (as nnU-Net averages its folds).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Ensemble", "members_of"]


class Ensemble(nn.Module):
    """Averages the class probabilities of its members.

    ``forward`` returns logits whose sigmoid (one output) or softmax (several) is the mean of
    the members' probabilities, so the ensemble stands wherever a single network's logits do.
    The dense read-out (:func:`penn.inference.predictor.predict_volumes`) runs each member's own
    fast
    read-out and averages their probability maps instead.

    Args:
        members: networks of one architecture (same inputs, same number of outputs).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    @property
    def patch_size(self) -> int | None:
        return getattr(self.members[0], "patch_size", None)

    @property
    def context_dilation(self) -> int:
        return getattr(self.members[0], "context_dilation", 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.members]
        if logits[0].shape[1] == 1:
            p = torch.stack([torch.sigmoid(z) for z in logits]).mean(0)
            p = p.clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        return torch.stack([z.softmax(dim=1) for z in logits]).mean(0).clamp_min(1e-12).log()


def members_of(net: nn.Module) -> list[nn.Module]:
    """The networks whose probabilities make up ``net``'s: its members, or ``net`` itself."""
    return list(net.members) if isinstance(net, Ensemble) else [net]
