"""The run graph: which steps a run has, in which order, and what each reads.

A *stage kind* is code (``stages/<kind>.py``); a *step* is a kind placed in the run. The kind
``predict`` runs twice, once on the SFT policy and once on the PPO policy, so steps and kinds differ.
The Helm chart renders one Job per step with the same names and ``depends-on`` annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BadInput

__all__ = ["STEPS", "Step", "get_step", "step_names", "topological"]


@dataclass(frozen=True)
class Step:
    """One node of the run graph."""

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    #: the upstream step whose published model this step uses (predict: sft or ppo)
    model_from: str | None = None


STEPS: tuple[Step, ...] = (
    Step("prepare", "prepare"),
    Step("sft", "sft", ("prepare",)),
    Step("predict_sft", "predict", ("prepare", "sft"), model_from="sft"),
    Step("evaluate_sft", "evaluate", ("prepare", "predict_sft")),
    Step("rm_data", "rm_data", ("prepare", "sft"), model_from="sft"),
    Step("rm", "rm", ("rm_data", "sft"), model_from="sft"),
    Step("ppo", "ppo", ("prepare", "sft", "rm"), model_from="sft"),
    Step("predict_ppo", "predict", ("prepare", "ppo"), model_from="ppo"),
    Step("evaluate_ppo", "evaluate", ("prepare", "predict_ppo")),
)

_BY_NAME = {s.name: s for s in STEPS}


def step_names() -> list[str]:
    return [s.name for s in STEPS]


def get_step(name: str) -> Step:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise BadInput(f"unknown step {name!r}; steps are: {', '.join(step_names())}") from None


def topological(steps: tuple[Step, ...] = STEPS) -> list[Step]:
    """Steps ordered so that every step comes after its inputs, otherwise in declared order.

    Raises ``ValueError`` on a cycle or an input that is not a step.
    """
    done: list[Step] = []
    seen: set[str] = set()
    pending = list(steps)
    while pending:
        ready = next((s for s in pending if all(i in seen for i in s.inputs)), None)
        if ready is None:
            raise ValueError(f"cycle or unknown input among {[s.name for s in pending]}")
        done.append(ready)
        seen.add(ready.name)
        pending.remove(ready)
    return done
