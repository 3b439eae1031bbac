"""``python -m text2sql_core.cli``: the entrypoint torchrun and deepspeed launch once per GPU."""

from . import entrypoint

entrypoint()
