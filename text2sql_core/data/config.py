"""Where a run's dataset comes from: the ``data`` section of the run config.

Read by the ``prepare`` stage (``ctx.run_config.data``); part of every step's config hash, so a
different dataset is a different run. Paths are local paths (relative to the current directory) or
``store://<key>`` URIs in the run's artifact store (how a cluster run finds its data).

WikiSQL (``format: wikisql``) ships a question file, a tables file and one SQLite file per split
(``dev.jsonl``, ``dev.tables.jsonl``, ``dev.db``): ``train``/``dev`` name the question files,
``tables``/``train_tables`` the tables files and ``db_file``/``train_db_file`` the SQLite files;
``db_dir`` (Spider's one folder per database) does not apply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DataConfig", "DatasetFormat"]

DatasetFormat = Literal["spider", "bird", "cosql", "sparc", "chase", "wikisql"]

#: fields that only WikiSQL reads, and fields that WikiSQL has no use for
_WIKISQL_ONLY = ("db_file", "train_db_file")
_NOT_WIKISQL = ("db_dir", "train_db_dir")


class DataConfig(BaseModel):
    """A Spider-format dataset (or BIRD / multi-turn CoSQL, SParC, CHASE / WikiSQL) and its databases."""

    model_config = ConfigDict(extra="forbid")

    format: DatasetFormat = Field("spider", description="Dataset format of `train` and `dev`.")
    train: str = Field("data/train.json", description="Training split (dataset JSON; WikiSQL: its train.jsonl); "
                                                      "path or store:// URI.")
    dev: str = Field("data/dev.json", description="Evaluation split (dataset JSON; WikiSQL: its dev.jsonl); "
                                                  "path or store:// URI.")
    tables: str = Field("data/tables.json", description="Schemas of all databases (Spider tables.json; WikiSQL: "
                                                        "the dev split's dev.tables.jsonl, required).")
    train_tables: str | None = Field(None, description="Schemas of the training databases when they ship apart "
                                                      "from `tables` (BIRD; WikiSQL's train.tables.jsonl); "
                                                      "defaults to `tables`.")
    db_dir: str = Field("data/database",
                        description="Directory holding <db_id>/<db_id>.sqlite for every db_id of both splits "
                                    "(not for WikiSQL).")
    train_db_dir: str | None = Field(None, description="Databases of the training split when they live apart "
                                                       "from `db_dir` (BIRD); defaults to `db_dir`.")
    db_file: str | None = Field(None, description="WikiSQL only, required there: the dev split's SQLite file "
                                                  "(dev.db; tables table_<id>, columns col0..colN).")
    train_db_file: str | None = Field(None, description="WikiSQL only: the training split's SQLite file "
                                                        "(train.db); defaults to `db_file`.")
    max_train: int | None = Field(None, ge=1, description="Use only the first N training examples (quick runs).")
    max_dev: int | None = Field(None, ge=1, description="Use only the first N dev examples (quick runs).")

    @model_validator(mode="after")
    def _fields_of_the_format(self) -> DataConfig:
        """WikiSQL's files are not Spider's: a field of the other layout would be silently ignored."""
        given = self.model_fields_set
        if self.format == "wikisql":
            for name in ("db_file", "tables"):
                if name not in given or getattr(self, name) is None:
                    what = "its SQLite file (dev.db)" if name == "db_file" else "its tables file (dev.tables.jsonl)"
                    raise ValueError(f"`data.{name}` is required with `data.format: wikisql`: give {what}")
            for name in _NOT_WIKISQL:  # a dumped config repeats the defaults: only other values are refused
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"`data.{name}` is not for WikiSQL (its tables live in `data.db_file`); "
                                     "remove it")
        else:
            for name in _WIKISQL_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(f"`data.{name}` is WikiSQL's SQLite file; `data.format: {self.format}` "
                                     "reads `data.db_dir`")
        return self
