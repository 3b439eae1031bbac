"""The rollout every online RL algorithm shares: which prompts a step takes, sampling, decoding.

Rollouts need the exact tokens sampled (their log-probabilities are the actions), so sampling
stops at EOS only and records where predict's value-copy constraint changed the distribution; the
SQL that is executed is cut to one clean statement the way ``predict`` cuts it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed

if TYPE_CHECKING:  # pragma: no cover
    from .constrained import TokenConstraints

__all__ = ["PromptExample", "SeededRowSampler", "decode_responses", "examples_from_rows", "prompt_batch",
           "response_mask", "row_seed", "sample_responses", "step_row_seeds"]


@dataclass(frozen=True)
class PromptExample:
    """A training prompt and what its answer is checked against."""

    prompt: str
    db_id: str
    query: str


def response_mask(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for every response token up to and including the first EOS, 0 after it."""
    is_eos = responses == eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()


def row_seed(seed: int, step: int, row: int) -> int:
    """The seed of one sampled row: its run seed, training step and place in the step's global batch."""
    return ((seed * 1_000_003 + step) * 1_000_003 + row) % (2**63 - 1)


def step_row_seeds(seed: int, step: int, batch_size: int, rows: int, world: distributed.World | None = None,
                   per_prompt: int = 1) -> list[int]:
    """The seeds of this rank's ``rows`` samples of ``step``, by their places in the step's global batch.

    The global batch is ``batch_size`` prompts of ``per_prompt`` samples each; this rank holds its share
    of the prompts (:func:`text2sql_core.distributed.shard_indices`), so on any number of ranks a sample
    gets the seed it gets in one process.
    """
    first = distributed.shard_indices(batch_size, world or distributed.world()).start * per_prompt
    return [row_seed(seed, step, first + r) for r in range(rows)]


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with the tokens outside each row's top-``top_p`` probability mass set to -inf (one kept at least)."""
    ascending, order = torch.sort(logits, dim=-1)
    below = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p  # the least likely tokens, up to 1 - top_p
    below[..., -1] = False
    return logits.masked_fill(below.scatter(-1, order, below), float("-inf"))


class SeededRowSampler:
    """A logits processor that draws each row's next token from that row's own generator.

    ``model.generate(do_sample=True)`` draws every row from torch's one global generator, so a row's
    sample depends on which rows share its batch: the same prompt sampled on another rank, or beside
    other prompts, gets other tokens. Here row ``i`` draws with ``seeds[i]`` alone (inverse CDF of the
    temperature-scaled, nucleus-filtered softmax, in float64) and the returned scores keep only the
    drawn token, so ``generate`` run greedily emits it. The draw of a row depends on its seed and
    its logits only: on 1 or N ranks, in any batch, the same row samples the same tokens (up to
    float error in the logits, which moves a draw only when it falls on a boundary of the CDF).
    """

    def __init__(self, seeds: Sequence[int], temperature: float = 1.0, top_p: float = 1.0) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows to sample but {len(self.generators)} row seeds")
        logits = scores.double() / self.temperature
        if self.top_p < 1.0:
            logits = _nucleus(logits, self.top_p)
        cdf = logits.softmax(dim=-1).cumsum(dim=-1)
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])
        drawn = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1), right=True)
        drawn = drawn.clamp_max(scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter(1, drawn, 0.0)


@torch.no_grad()
def sample_responses(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
                     temperature: float = 1.0, top_p: float = 1.0, copy_from: Sequence[str] | None = None,
                     row_seeds: Sequence[int] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, TokenConstraints | None]:
    """Sampled responses ``(B, N)`` (padded after the first EOS), their mask, and where sampling was constrained.

    Rollouts need the exact tokens sampled (their log-probabilities are the PPO actions), so this
    stops at EOS only; the SQL that is executed is cut at the end of its first statement by
    :func:`~text2sql_core.models.generation.clean_sql`, as in prediction. ``copy_from`` (one prompt
    per row) samples under predict's value-copy constraint, so the policy explores the answers it
    can give when it is deployed with ``predict.copy_values``; the positions it constrained come back
    (:class:`~text2sql_core.rl.constrained.TokenConstraints`), so that scoring renormalises the same way.
    ``row_seeds`` (one per row) draws each row from its own generator (:class:`SeededRowSampler`):
    the samples no longer depend on the batch a row is in, nor on the global RNG.
    """
    processors: list[Any] = []
    recorder = None
    if copy_from is not None:
        from ..models.value_copy import ValueCopyConstraint
        from .constrained import RecordingProcessor

        recorder = RecordingProcessor(ValueCopyConstraint(tokenizer, list(copy_from), prompt_ids.shape[1]),
                                      prompt_ids.shape[1])
        processors.append(recorder)  # sees the raw logits, before temperature and top-p
    if row_seeds is not None:
        processors.append(SeededRowSampler(row_seeds, temperature, top_p))
        search: dict[str, Any] = {"do_sample": False}
    else:
        search = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    kwargs: dict[str, Any] = {"logits_processor": processors} if processors else {}
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **search, **kwargs)
    responses = out[:, prompt_ids.shape[1]:]
    if responses.shape[1] == 0:  # max_new_tokens reached at once cannot happen, but stay total
        responses = torch.full((out.shape[0], 1), tokenizer.eos_token_id, dtype=torch.long)
    mask = response_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    keep = int(mask.sum(1).max().item())
    responses, mask = responses[:, :keep], mask[:, :keep]
    constraints = recorder.constraints().truncate(keep, mask) if recorder is not None else None
    return responses, mask, constraints


def decode_responses(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """The SQL of each response: decoded, then cut to one clean statement the way ``predict`` does."""
    from ..models.generation import clean_sql

    texts = []
    for row, m in zip(responses.tolist(), mask.tolist(), strict=True):
        ids = [t for t, keep in zip(row, m, strict=True) if keep]
        texts.append(clean_sql(tokenizer.decode(ids, skip_special_tokens=True)))
    return texts


def examples_from_rows(rows: Sequence[dict[str, Any]]) -> list[PromptExample]:
    """Prompt examples from prepared rows (``prompt``, ``db_id``, ``query``)."""
    return [PromptExample(r["prompt"], r["db_id"], r["query"]) for r in rows]


def prompt_batch(examples: Sequence[Any], step: int, batch_size: int, seed: int) -> list[Any]:
    """The items of training step ``step``: consecutive slices of a fresh seeded permutation per epoch.

    The items of step ``s`` depend on ``s`` only, so a resumed run sees the same ones as an
    uninterrupted run (for prompts and for DPO's pairs alike).
    """
    n = len(examples)
    out = []
    orders: dict[int, list[int]] = {}
    for position in range(step * batch_size, step * batch_size + batch_size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            order = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            orders[epoch] = order
        out.append(examples[orders[epoch][offset]])
    return out
