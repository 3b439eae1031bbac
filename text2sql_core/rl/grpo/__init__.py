"""GRPO: config beside trainer (as TRL), losses in their own module."""
