"""Forward passes over (prompt, response) rows that run a prompt prefix shared by several rows once.

A text-to-SQL prompt is mostly instruction and schema (the demo's: ~450 tokens) and the same for every
question on one database; a response is ~15 tokens. Every PPO step runs the actor, the reference,
the critic and the reward model over its rollout, and the reward model scores a chosen and a
rejected answer to the same prompt, so the prompt dominates the cost. Rows are therefore grouped
(by database, or any key); each group runs its longest common prompt prefix once with a key/value
cache, repeats the cache over its rows and runs only the rest (question + response) per row. The
result is that of the plain per-row forward pass up to float rounding, gradients included: they flow
through the repeated cache into the prefix computation, summed over the rows.

Layout of a group's rows after the prefix: the rest of each prompt left-padded to the group's widest,
then the response right-padded to the batch's ``N`` columns, so response position ``i`` sits in the
same column for every row. Position ids count real tokens only (what ``generate`` does for left-padded
prompts), so a row's numbers do not depend on its batch mates.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .losses import entropy_from_logits, logprobs_from_logits

if TYPE_CHECKING:  # pragma: no cover
    from .constrained import TokenConstraints

__all__ = ["PackedGroup", "head_outputs", "pack_rows", "response_logprobs"]

#: below this many shared tokens a prefix pass costs more than it saves
MIN_SHARED_PREFIX = 8


@dataclass
class PackedGroup:
    """Rows that share ``prefix_ids`` (possibly none), ready for one cached forward pass."""

    rows: list[int]  # positions of these rows in the caller's batch
    prefix_ids: torch.Tensor | None  # (1, P)
    input_ids: torch.Tensor  # (r, W + N): prompt rest (left-padded), response (right-padded)
    attention_mask: torch.Tensor  # (r, P + W + N)
    position_ids: torch.Tensor  # (r, W + N)
    prompt_width: int  # W

    @property
    def response_width(self) -> int:
        return self.input_ids.shape[1] - self.prompt_width


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Leading tokens all rows share, leaving each row at least its last prompt token (it predicts the response)."""
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        n = 0
        while n < limit and r[n] == first[n]:
            n += 1
        limit = n
    return max(0, limit)


def pack_rows(prompts: Sequence[Sequence[int]], responses: torch.Tensor, response_mask: torch.Tensor,
              keys: Sequence[Hashable] | None, pad_token_id: int) -> list[PackedGroup]:
    """Group rows by ``keys`` (one group without) and lay each group out around its shared prompt prefix.

    ``prompts`` are token lists (bos included); ``responses``/``response_mask`` are ``(B, N)``, right-padded.
    """
    device = responses.device
    members: dict[Hashable, list[int]] = {}
    for i in range(len(prompts)):
        members.setdefault(keys[i] if keys is not None else None, []).append(i)
    groups = []
    for rows in members.values():
        shared = _common_prefix([prompts[i] for i in rows])
        if shared < MIN_SHARED_PREFIX:
            shared = 0
        rest = [list(prompts[i][shared:]) for i in rows]
        width = max(len(r) for r in rest)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rest):
            ids[j, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r):] = 1
        index = torch.tensor(rows, dtype=torch.long, device=device)
        ids = torch.cat([ids.to(device), responses.index_select(0, index)], dim=1)
        mask = torch.cat([mask.to(device), response_mask.index_select(0, index).long()], dim=1)
        positions = shared + (mask.cumsum(-1) - 1).clamp_min(0)
        prefix = None
        if shared:
            prefix = torch.tensor([list(prompts[rows[0]][:shared])], dtype=torch.long, device=device)
            mask = torch.cat([torch.ones((len(rows), shared), dtype=torch.long, device=device), mask], dim=1)
        groups.append(PackedGroup(rows, prefix, ids, mask, positions, width))
    return groups


def _unwrap(model: Any) -> Any:
    """The HF model under a DeepSpeed engine and/or a PEFT wrapper (adapters stay injected in it)."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _cache(output: Any) -> Any:
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _cache_kwargs(call: Any, group: PackedGroup, **prefix_kwargs: Any) -> dict[str, Any]:
    """Run the group's prefix once and return the arguments that hand its cache to the row pass."""
    if group.prefix_ids is None:
        return {}
    cache = _cache(call(input_ids=group.prefix_ids, use_cache=True, **prefix_kwargs))
    cache.batch_repeat_interleave(len(group.rows))
    return {"cache": cache, "use_cache": True}


def _scatter(parts: list[torch.Tensor], groups: list[PackedGroup]) -> torch.Tensor:
    """Stack per-group results back into the caller's row order (differentiably)."""
    order = [i for g in groups for i in g.rows]
    inverse = torch.empty(len(order), dtype=torch.long, device=parts[0].device)
    inverse[torch.tensor(order, device=parts[0].device)] = torch.arange(len(order), device=parts[0].device)
    return torch.cat(parts, dim=0).index_select(0, inverse)


def response_logprobs(model: Any, groups: list[PackedGroup], temperature: float = 1.0, with_entropy: bool = False,
                      constraints: TokenConstraints | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response token i | prompt, tokens < i) for every row: ``(B, N)``; entropy too if asked.

    Logits are divided by the sampling temperature, so the ratio in the PPO loss compares the
    distribution the tokens were really drawn from. The LM head runs on the response columns only.
    ``constraints`` (where sampling masked tokens) renormalises those positions over the allowed
    tokens, for the same reason.
    """
    logps, ents = [], []
    for g in groups:
        n = g.response_width
        extra = _cache_kwargs(model, g, logits_to_keep=1)
        logits = model(input_ids=g.input_ids, attention_mask=g.attention_mask, position_ids=g.position_ids,
                       logits_to_keep=n + 1, **extra).logits
        logits = logits[:, :-1].float() / temperature
        if constraints is not None:
            logits = constraints.select(g.rows).apply(logits)
        logps.append(logprobs_from_logits(logits, g.input_ids[:, g.prompt_width:]))
        if with_entropy:
            ents.append(entropy_from_logits(logits))
    return _scatter(logps, groups), (_scatter(ents, groups) if with_entropy else None)


def head_outputs(model: Any, groups: list[PackedGroup]) -> torch.Tensor:
    """A sequence classifier's (one-label) head at the last prompt token and every response column.

    Returns ``(B, N + 1)``: column ``i`` is the head at the state *before* response token ``i`` (the
    critic's value), column ``i + 1`` the state after it, so a row's reward-model score is column
    ``last + 1`` with ``last`` its last response position.
    """
    seqcls = _unwrap(model)
    body = seqcls.base_model  # HF: the transformer without its head
    parts = []
    for g in groups:
        n = g.response_width
        extra = _cache_kwargs(body, g)
        hidden = body(input_ids=g.input_ids, attention_mask=g.attention_mask, position_ids=g.position_ids,
                      **extra).last_hidden_state
        parts.append(seqcls.score(hidden[:, -(n + 1):]).squeeze(-1).float())
    return _scatter(parts, groups)
