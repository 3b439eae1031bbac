"""The run graph: which steps a run has, in which order, and what each reads.

A *stage kind* is code (declared in :mod:`text2sql_core.registry`); a *step* is a kind placed in the
run. ``predict`` runs twice, once on the SFT policy and once on the RL policy, so steps and kinds
differ. The RL step is named for its role, ``rl``, whatever ``rl.algorithm`` chooses (``ppo``,
``grpo``, ``dpo``): Job names, the report and the controller do not change with the algorithm. The
algorithm's declared inputs pull the providers it needs (``rm_data``, ``rm``) into the graph.
The Helm chart renders one Job per step with the same names and ``depends-on`` annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import BadInput
from .registry import RL_KINDS, get_kind

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

__all__ = ["DEFAULT_ALGORITHM", "RENAMED_STEPS", "STEPS", "Step", "all_step_names", "build_steps", "get_step",
           "step_names", "steps_for", "topological"]

#: ``rl.algorithm`` when the run config does not say
DEFAULT_ALGORITHM = "ppo"

#: step names of earlier releases, and what they are called now
RENAMED_STEPS = {"ppo": "rl", "predict_ppo": "predict_rl", "evaluate_ppo": "evaluate_rl"}


@dataclass(frozen=True)
class Step:
    """One node of the run graph."""

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    #: the upstream step whose published model this step uses (predict: sft or rl)
    model_from: str | None = None


_TRUNK: tuple[Step, ...] = (
    Step("prepare", "prepare"),
    Step("sft", "sft", ("prepare",)),
    Step("predict_sft", "predict", ("prepare", "sft"), model_from="sft"),
    Step("evaluate_sft", "evaluate", ("prepare", "predict_sft")),
)
#: steps that exist only when the RL algorithm reads them
_PROVIDERS: dict[str, Step] = {
    "rm_data": Step("rm_data", "rm_data", ("prepare", "sft"), model_from="sft"),
    "rm": Step("rm", "rm", ("rm_data", "sft"), model_from="sft"),
}
_TAIL: tuple[Step, ...] = (
    Step("predict_rl", "predict", ("prepare", "rl"), model_from="rl"),
    Step("evaluate_rl", "evaluate", ("prepare", "predict_rl")),
    # last: the card quotes both evaluations, so they are published first
    Step("export", "export", ("prepare", "rl", "evaluate_sft", "evaluate_rl"), model_from="rl"),
)


def build_steps(algorithm: str = DEFAULT_ALGORITHM, settings: Any = None) -> tuple[Step, ...]:
    """The graph for one RL algorithm (``settings``: its config, for inputs that depend on it)."""
    if algorithm not in RL_KINDS:
        raise BadInput(f"unknown RL algorithm {algorithm!r}; use one of: {', '.join(RL_KINDS)}",
                       field="rl.algorithm")
    rl_inputs = get_kind(algorithm).step_inputs(settings)
    needed: set[str] = set()
    pending = [i for i in rl_inputs if i in _PROVIDERS]
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            pending.extend(i for i in _PROVIDERS[name].inputs if i in _PROVIDERS)
    providers = tuple(s for n, s in _PROVIDERS.items() if n in needed)
    rl = Step("rl", algorithm, rl_inputs, model_from="sft")
    return (*_TRUNK, *providers, rl, *_TAIL)


def steps_for(run_config: RunConfig) -> tuple[Step, ...]:
    """The graph a run config describes."""
    algorithm = run_config.rl.algorithm
    return build_steps(algorithm, run_config.stage_config(algorithm))


#: the graph with the default algorithm and default settings
STEPS: tuple[Step, ...] = build_steps()


def step_names(steps: tuple[Step, ...] = STEPS) -> list[str]:
    return [s.name for s in steps]


def all_step_names() -> list[str]:
    """Every step name some graph has, in graph order (the CLI accepts any of them)."""
    return [s.name for s in (*_TRUNK, *_PROVIDERS.values())] + ["rl"] + [s.name for s in _TAIL]


def get_step(name: str, steps: tuple[Step, ...] = STEPS) -> Step:
    for s in steps:
        if s.name == name:
            return s
    if name in RENAMED_STEPS:
        raise BadInput(f"step {name!r} is now called {RENAMED_STEPS[name]!r} (the RL step is named for its role; "
                       f"`rl.algorithm` in the run config picks the algorithm)")
    raise BadInput(f"unknown step {name!r} in this run's graph; steps are: {', '.join(step_names(steps))}")


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
