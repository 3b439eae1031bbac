"""PPO under constrained decoding: record where sampling was constrained, score tokens the same way.

With ``ppo.copy_values`` the rollouts are sampled under the value-copy constraint, so the behaviour
policy at a constrained position is the policy renormalised over the allowed tokens. Scoring those
tokens with the unconstrained log-probabilities would make PPO optimise a different policy than the
one that acts: a negative advantage pushes probability into tokens that are never sampled (the masked
ones), the policy drifts where no reward sees it, and the KL estimate turns negative. So
:class:`RecordingProcessor` keeps, for every constrained (row, position), the set of allowed tokens,
and :meth:`TokenConstraints.apply` masks the logits at exactly those places before the softmax. The
actor, the reference policy and the entropy are then all those of the constrained policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RecordingProcessor", "TokenConstraints"]


@dataclass(frozen=True)
class TokenConstraints:
    """The allowed tokens at constrained response positions of a batch: ``allowed[k]`` at (rows[k], positions[k])."""

    rows: torch.Tensor  # (K,) long: row in the batch
    positions: torch.Tensor  # (K,) long: response position
    allowed: torch.Tensor  # (K, V) bool

    def __len__(self) -> int:
        return int(self.rows.numel())

    def select(self, rows: Sequence[int]) -> TokenConstraints:
        """The entries of ``rows`` (batch rows), renumbered to their order in ``rows``."""
        where = {r: j for j, r in enumerate(rows)}
        keep = [k for k, r in enumerate(self.rows.tolist()) if r in where]
        index = torch.tensor(keep, dtype=torch.long)
        return TokenConstraints(torch.tensor([where[r] for r in self.rows[index].tolist()], dtype=torch.long),
                                self.positions[index], self.allowed[index])

    def truncate(self, width: int, mask: torch.Tensor) -> TokenConstraints:
        """Only positions that are real response tokens (``mask`` ``(B, N)``, ``N <= width``)."""
        inside = self.positions < width
        rows, positions, allowed = self.rows[inside], self.positions[inside], self.allowed[inside]
        real = mask[rows, positions].bool() if rows.numel() else torch.zeros(0, dtype=torch.bool)
        return TokenConstraints(rows[real], positions[real], allowed[real])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, N, V)`` with every disallowed token at a constrained position set to -inf (autograd-safe)."""
        if not len(self):
            return logits
        rows, positions = self.rows.to(logits.device), self.positions.to(logits.device)
        allowed = self.allowed.to(logits.device)
        width = min(allowed.shape[1], logits.shape[-1])
        picked = logits[rows, positions]
        blocked = torch.ones_like(picked, dtype=torch.bool)
        blocked[:, :width] = ~allowed[:, :width]
        return logits.index_put((rows, positions), picked.masked_fill(blocked, float("-inf")))


class RecordingProcessor:
    """Wraps a logits processor (e.g. the value-copy constraint) and records where it removed tokens.

    ``prompt_width`` is where the generated tokens begin in ``input_ids``; the processor sees the
    raw logits (``generate`` runs custom processors before temperature and top-p), so a token it
    sets to -inf is exactly a token it forbids.
    """

    def __init__(self, inner: Any, prompt_width: int) -> None:
        self.inner = inner
        self.prompt_width = prompt_width
        self._rows: list[int] = []
        self._positions: list[int] = []
        self._allowed: list[torch.Tensor] = []
        self._vocab_width = 0  # the logits' width, as generate passes them

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._vocab_width = scores.shape[-1]
        finite = torch.isfinite(scores)
        scores = self.inner(input_ids, scores)
        removed = finite & ~torch.isfinite(scores)
        position = input_ids.shape[1] - self.prompt_width
        for row in removed.any(dim=1).nonzero().flatten().tolist():
            self._rows.append(row)
            self._positions.append(position)
            self._allowed.append(~removed[row].cpu())
        return scores

    def constraints(self) -> TokenConstraints:
        """What was recorded so far."""
        if not self._rows:
            return TokenConstraints(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                    torch.zeros((0, self._vocab_width), dtype=torch.bool))
        return TokenConstraints(torch.tensor(self._rows), torch.tensor(self._positions), torch.stack(self._allowed))
