"""The kinds of mistake ``rl.perturb`` makes in gold SQL, apart from it: configs validate them without sqlglot."""

__all__ = ["PERTURBATION_KINDS"]

PERTURBATION_KINDS = (
    "swap_column",
    "flip_comparison",
    "drop_condition",
    "change_aggregate",
    "order_direction",
    "change_limit",
    "swap_table",
)
