"""``t2s demo-data``: write the demo dataset (Spider layout) used by the demo run and the tests."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from ..data.demo import DEMO_SIZES, TEMPLATES, write_demo
from ..errors import BadInput

__all__ = ["register"]


def handle(args: argparse.Namespace) -> int:
    for name in ("train_size", "dev_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"must be >= 1, got {value}", field="--" + name.replace("_", "-"))
    ds = write_demo(Path(args.out), seed=args.seed, size=args.size, train_size=args.train_size,
                    dev_size=args.dev_size, heldout_share=args.heldout_share)
    holdout = Counter(e.holdout for e in ds.dev)
    combos = {(e.template, e.combo) for e in ds.dev if e.holdout == "combination"}
    print(f"wrote {args.out}: {len(ds.train)} train and {len(ds.dev)} dev questions "
          f"({holdout['values']} with unseen values, {holdout['combination']} from {len(combos)} held-out "
          f"template/table combinations) on {len(ds.databases)} databases, seed {args.seed}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the demo Text-to-SQL dataset (Spider format, 4 SQLite databases)",
        description="Write a Spider-format dataset to DIR: train.json, dev.json, tables.json, dev_gold.sql and "
                    f"database/<db>/<db>.sqlite. Questions come from {len(TEMPLATES)} templates (count, filters, "
                    "aggregates, GROUP BY/HAVING, ORDER BY/LIMIT, joins, nested queries, set operations). The dev "
                    "split uses only values never seen in train, and about a fifth of it comes from "
                    "template/table combinations held out of train. The same seed gives identical files.",
    )
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory: new, empty, or an earlier demo dataset (replaced)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--size", choices=sorted(DEMO_SIZES), default="default",
                   help="preset split sizes: " + ", ".join(f"{k} = {v[0]} train / {v[1]} dev"
                                                           for k, v in DEMO_SIZES.items()))
    p.add_argument("--train-size", type=int, metavar="N", help="number of training questions (overrides --size)")
    p.add_argument("--dev-size", type=int, metavar="N", help="number of dev questions (overrides --size)")
    p.add_argument("--heldout-share", type=float, default=0.2, metavar="F",
                   help="share of dev drawn from held-out template/table combinations (default: %(default)s)")
    p.set_defaults(func=handle)
