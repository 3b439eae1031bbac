"""The distributed runtime: batch splitting and sharding rules in one process, collectives on 2 gloo ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from text2sql_core import distributed
from text2sql_core.distributed import World
from text2sql_core.errors import BadInput
from text2sql_core.models.batching import EncodedExample, PlannedBatch, collate, shard_batch


def test_a_single_process_is_a_world_of_one_and_every_helper_is_the_identity(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    w = distributed.init()
    assert w == World() and w.is_main and not w.distributed
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.wait_for_main(3) == 3
    assert distributed.all_gather_objects("x") == ["x"]
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.all_reduce_mean({"loss": 2.5}) == {"loss": 2.5}
    assert distributed.gather_in_order([1, 2, 3], 3) == [1, 2, 3]
    assert distributed.token_share(7.0) == 1.0
    distributed.barrier()
    assert distributed.finish(0) is None  # one process: returns, the caller exits as usual


@pytest.mark.parametrize(("size", "per_rank"), [(1, 8), (2, 4), (4, 2), (8, 1)])
def test_global_batch_sizes_split_evenly(size: int, per_rank: int) -> None:
    assert distributed.split_batch(8, "stages.sft.batch_size", World(size=size)) == per_rank


def test_a_batch_size_the_ranks_cannot_split_is_a_bad_input_naming_the_field() -> None:
    with pytest.raises(BadInput, match=r"field `stages.sft.batch_size`: is 6, which 4 ranks cannot split") as exc:
        distributed.split_batch(6, "stages.sft.batch_size", World(rank=1, size=4))
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("n", [0, 1, 5, 8, 11])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_are_disjoint_and_cover_the_items_in_order(n: int, size: int) -> None:
    items = list(range(n))
    parts = [distributed.shard(items, World(rank=r, size=size)) for r in range(size)]
    assert [x for p in parts for x in p] == items
    assert [list(distributed.shard_indices(n, World(rank=r, size=size))) for r in range(size)] == parts
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_planned_batch_is_shared_out_and_a_rank_without_rows_adds_nothing_to_the_loss() -> None:
    rows = tuple(EncodedExample(input_ids=(1, 5, 6, 7 + i, 9, 2), prompt_len=4) for i in range(3))
    batch = PlannedBatch(rows, prefix_len=3)
    shards = [shard_batch(batch, r, 2) for r in range(2)]
    assert [e for s in shards for e in s.examples] == list(rows)
    assert all(s.prefix_len == 3 for s in shards)
    empty = shard_batch(PlannedBatch(rows[:1], prefix_len=3), 1, 2)
    assert len(empty.examples) == 1
    assert bool((collate(empty, 0)["labels"] == -100).all())  # runs forward/backward, no loss term


_COLLECTIVES = textwrap.dedent('''
    import json, sys, torch
    from text2sql_core import distributed
    w = distributed.init()
    out = {"rank": w.rank, "size": w.size}
    out["broadcast"] = distributed.broadcast_object({"from": w.rank})
    out["mean"] = distributed.all_reduce_mean({"loss": float(w.rank + 1)})
    out["weighted"] = distributed.all_reduce_mean({"x": float(w.rank)}, weight=1.0 + 2 * w.rank)
    out["sum"] = distributed.all_reduce_sum({"tokens": 10.0 * (w.rank + 1)})
    out["gathered"] = distributed.gather_in_order([f"r{w.rank}-{i}" for i in distributed.shard_indices(5)], 5)
    p = torch.nn.Parameter(torch.zeros(3))
    q = torch.nn.Parameter(torch.zeros(2))  # no gradient on rank 1: counts as zeros
    (p * (w.rank + 1.0)).sum().backward() if w.rank else (p.sum() + q.sum()).backward()
    distributed.all_reduce_gradients([p, q])
    out["grad"] = [p.grad.tolist(), q.grad.tolist()]
    weights = torch.nn.Parameter(torch.full((2,), float(w.rank)))
    distributed.broadcast_parameters([weights])
    out["weights"] = weights.tolist()
    out["share"] = distributed.token_share(10.0 * (w.rank + 1))
    json.dump(out, open(sys.argv[1] + f"/{w.rank}.json", "w"))
    # finish: after a barrier, logs flushed, out with os._exit: the interpreter's teardown (where gloo's
    # threads aborted a successful rank) never runs, so this atexit hook must not either
    import atexit, pathlib
    atexit.register(lambda: pathlib.Path(sys.argv[1], f"teardown-{w.rank}").touch())
    print(f"rank {w.rank} done", end="")  # unflushed: finish flushes it
    distributed.finish(0)
    raise SystemExit(5)  # not reached
''')


@pytest.mark.slow
def test_collectives_on_two_gloo_ranks(tmp_path: Path) -> None:
    script = tmp_path / "collectives.py"
    script.write_text(_COLLECTIVES)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                        str(script), str(tmp_path)], capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for out in got:
        assert out["size"] == 2
        assert out["broadcast"] == {"from": 0}
        assert out["mean"] == {"loss": 1.5}
        assert out["weighted"] == pytest.approx({"x": 3 / 4})  # (0*1 + 1*3) / (1 + 3)
        assert out["sum"] == {"tokens": 30.0}
        assert out["grad"] == [[1.5, 1.5, 1.5], [0.5, 0.5]]
        assert out["weights"] == [0.0, 0.0]
    assert got[0]["gathered"] == ["r0-0", "r0-1", "r0-2", "r1-3", "r1-4"]  # dataset order, on rank 0 only
    assert got[1]["gathered"] is None
    # this rank's share of the ranks' mean token count: 10 and 20 tokens, mean 15
    assert [out["share"] for out in got] == pytest.approx([10 / 15, 20 / 15])
    assert "rank 0 done" in r.stdout and "rank 1 done" in r.stdout
    assert not list(tmp_path.glob("teardown-*"))
