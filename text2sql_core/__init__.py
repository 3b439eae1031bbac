"""text2sql-rlhf core: the stages of the Text-to-SQL RLHF pipeline and what they share.

Heavy dependencies (torch, transformers) are imported lazily inside the stages that need them,
so that the CLI, the controller and the evaluator start fast.
"""

__version__ = "0.1.0"
