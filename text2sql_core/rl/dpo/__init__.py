"""Direct preference optimisation: its config and its loop (the ``dpo`` stage kind is the adapter)."""
