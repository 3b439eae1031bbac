"""Where a run's dataset comes from: the ``data`` section of the run config.

Read by the ``prepare`` stage (``ctx.run_config.data``); part of every step's config hash, so a
different dataset is a different run. Paths are local paths (relative to the current directory) or
``store://<key>`` URIs in the run's artifact store (how a cluster run finds its data).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DataConfig", "DatasetFormat"]

DatasetFormat = Literal["spider", "bird", "cosql", "sparc", "chase"]


class DataConfig(BaseModel):
    """A Spider-format dataset (or BIRD / multi-turn CoSQL, SParC, CHASE) and its databases."""

    model_config = ConfigDict(extra="forbid")

    format: DatasetFormat = Field("spider", description="Dataset format of `train` and `dev`.")
    train: str = Field("data/train.json", description="Training split (dataset JSON); path or store:// URI.")
    dev: str = Field("data/dev.json", description="Evaluation split (dataset JSON); path or store:// URI.")
    tables: str = Field("data/tables.json", description="Schemas of all databases (Spider tables.json).")
    train_tables: str | None = Field(None, description="Schemas of the training databases when they ship apart "
                                                      "from `tables` (BIRD); defaults to `tables`.")
    db_dir: str = Field("data/database",
                        description="Directory holding <db_id>/<db_id>.sqlite for every db_id of both splits.")
    train_db_dir: str | None = Field(None, description="Databases of the training split when they live apart "
                                                       "from `db_dir` (BIRD); defaults to `db_dir`.")
    max_train: int | None = Field(None, ge=1, description="Use only the first N training examples (quick runs).")
    max_dev: int | None = Field(None, ge=1, description="Use only the first N dev examples (quick runs).")
