"""The reward model's pieces: encoding (prompt, SQL), scoring at the last token, the pairwise loss, adapters.

A reward model is the SFT causal LM turned into a one-label sequence classifier (same body, a new
linear ``score`` head). Its score of a response is the head read at the response's last token (the
EOS that closes the SQL), computed by :func:`text2sql_core.rl.packing.head_outputs`, so the reward
model, the PPO reward and the PPO critic all read the same head the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "add_lora",
    "collate_responses",
    "encode_response",
    "load_reward_model",
    "pair_scores",
    "pairwise_accuracy",
    "pairwise_loss",
    "score_texts",
    "sequence_classifier_from_policy",
]


def encode_response(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """``(<s> prompt, response </s>)`` token ids as the policy sees them, the prompt cut from its start to fit.

    Prompt and response are tokenized apart, as in sampling (the response's tokens follow the
    prompt's), and the response always survives whole (up to ``max_length - 1`` tokens).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[:max_length - 1]
    room = max_length - len(response_ids)
    return prompt_ids[-room:], response_ids


def collate_responses(responses: Sequence[Sequence[int]], pad_token_id: int, device=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(B, N)`` response ids and their mask."""
    width = max(len(r) for r in responses)
    ids = torch.full((len(responses), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def score_texts(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                keys: Sequence[Any] | None = None) -> torch.Tensor:
    """Scores of (prompt, response) rows at each response's last token, with gradients if enabled.

    Rows with the same ``key`` (their database) run their shared prompt prefix once
    (:mod:`text2sql_core.rl.packing`); without keys, rows with the same prompt do.
    """
    from .packing import head_outputs, pack_rows

    encoded = [encode_response(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    device = next(model.parameters()).device
    ids, mask = collate_responses([r for _, r in encoded], tokenizer.pad_token_id, device)
    groups = pack_rows([p for p, _ in encoded], ids, mask, list(keys) if keys is not None else list(prompts),
                       tokenizer.pad_token_id)
    heads = head_outputs(model, groups)
    last = mask.sum(1) - 1
    return heads[torch.arange(len(encoded), device=heads.device), last + 1]


def pair_scores(model, tokenizer, pairs: Sequence[dict[str, Any]], max_length: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) for a batch of ``{prompt, chosen, rejected}`` pairs, in one forward pass.

    Pairs are grouped by ``db_id`` when they have one (the schema prefix runs once per database).
    """
    prompts = [p["prompt"] for p in pairs]
    keys = [p.get("db_id", p["prompt"]) for p in pairs]
    scores = score_texts(model, tokenizer, prompts + prompts,
                         [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], max_length, keys + keys)
    return scores[:len(pairs)], scores[len(pairs):]


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """InstructGPT's ranking loss ``-log sigmoid(r_chosen - r_rejected)``, averaged over pairs."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


@torch.no_grad()
def pairwise_accuracy(model, tokenizer, pairs: Sequence[dict[str, Any]], max_length: int, batch_size: int = 32
                      ) -> dict[str, float]:
    """Share of pairs with ``r_chosen > r_rejected`` (ties count as wrong), mean margin, mean scores.

    Pairs that record their ``origin`` (``model``, ``perturb:<kind>``) also get the accuracy per origin
    (``by_origin``): how the reward model does on the policy's own mistakes is the figure that matters
    most, and the mix of origins differs from one policy to the next.
    """
    if not pairs:
        return {"accuracy": float("nan"), "margin": float("nan"), "chosen": float("nan"),
                "rejected": float("nan"), "pairs": 0}
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        rc, rr = pair_scores(model, tokenizer, pairs[start:start + batch_size], max_length)
        chosen.append(rc)
        rejected.append(rr)
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    right = rc > rr
    out: dict[str, Any] = {"accuracy": float(right.float().mean()), "margin": float((rc - rr).mean()),
                           "chosen": float(rc.mean()), "rejected": float(rr.mean()), "pairs": len(pairs)}
    origins: dict[str, list[bool]] = {}
    for pair, ok in zip(pairs, right.tolist(), strict=True):
        if isinstance(pair.get("origin"), str):
            origins.setdefault(pair["origin"], []).append(ok)
    if origins:
        out["by_origin"] = {k: {"accuracy": sum(v) / len(v), "pairs": len(v)} for k, v in sorted(origins.items())}
    return out


def sequence_classifier_from_policy(policy, tokenizer):
    """A one-label sequence classifier whose body is ``policy``'s transformer (copied), with a fresh head.

    Built from the loaded policy rather than from files, so it works whatever the SFT step published
    (full weights, or a LoRA adapter that the loader merged). The head starts near zero (HF init).
    """
    from transformers import AutoModelForSequenceClassification

    if hasattr(policy, "merge_and_unload"):  # an unmerged PEFT policy
        policy = policy.merge_and_unload()
    config = policy.config.__class__.from_dict(policy.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(config, dtype=policy.dtype)
    missing, unexpected = model.base_model.load_state_dict(policy.base_model.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"policy body does not fit the classifier: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    return model.to(policy.device)


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules, task: str, adapter_name: str = "default"):
    """Wrap ``model`` with a fresh LoRA adapter (B = 0: the wrapped model starts out unchanged).

    ``task`` is ``SEQ_CLS`` (reward model, critic: the ``score`` head is trained in full alongside)
    or ``CAUSAL_LM`` (actor).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type=task, bias="none")
    return get_peft_model(model, config, adapter_name=adapter_name)


REWARD_MODEL_FILE = "reward_model.json"


def load_reward_model(rm_dir: Path, policy, tokenizer):
    """The trained reward model published in ``rm_dir``: ``policy`` as a classifier with the RM adapter merged.

    The ``rm`` step publishes only its adapter (LoRA + score head, ``adapter/``) and
    ``reward_model.json`` naming the policy step it was built on, so a 7B reward model costs megabytes
    in the store; ``policy`` (that step's policy, as ``load_policy_from_step`` returns it) is copied,
    not modified.
    """
    import copy

    from peft import PeftModel

    from ..errors import BadInput

    rm_dir = Path(rm_dir)
    if not (rm_dir / REWARD_MODEL_FILE).is_file() or not (rm_dir / "adapter" / "adapter_config.json").is_file():
        raise BadInput(f"no reward model here ({REWARD_MODEL_FILE} and adapter/ expected)", uri=str(rm_dir))
    model = sequence_classifier_from_policy(copy.deepcopy(policy), tokenizer)
    model = PeftModel.from_pretrained(model, str(rm_dir / "adapter"), is_trainable=False).merge_and_unload()
    return model.eval()
