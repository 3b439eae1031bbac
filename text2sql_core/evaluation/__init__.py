"""Spider EX / EM with the official evaluator's semantics (test-suite-sql-eval), hardness, BIRD EX, reports.

Modules, in the order an evaluation uses them:

* ``inputs``: gold files (``SQL<TAB>db_id`` or dataset JSON) and predictions (lines, JSONL, BIRD JSON);
* ``tokenize`` / ``parse`` / ``schema``: SQL into the official nested structure;
* ``hardness``: easy / medium / hard / extra; ``exact_match``: EM;
* ``sqltext`` / ``execution``: what is executed, in the sandbox, and how results compare (EX, BIRD EX);
* ``api``: ``evaluate(...) -> EvalResult``; ``report``: per-example TSV, summary JSON, Markdown, PNG.
"""

from .api import EvalResult, ExampleScore, evaluate
from .inputs import GoldExample, Prediction, load_gold, load_predictions
from .report import format_table, write_outputs

__all__ = ["EvalResult", "ExampleScore", "GoldExample", "Prediction", "evaluate", "format_table", "load_gold",
           "load_predictions", "write_outputs"]
