"""One runner per step: atomic create, live leases refused, expired ones taken over, losses noticed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from text2sql_core.store.lease import LEASE_NAME, LeaseHeld, LeaseLost, StepLease


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _no_sleep(_s: float) -> None:
    raise AssertionError("a live lease must be refused at once, not waited for")


def test_create_bytes_is_exclusive(store) -> None:
    assert store.create_bytes("runs/r/s/_lease.json", b"first")
    assert not store.create_bytes("runs/r/s/_lease.json", b"second")
    assert store.get_bytes("runs/r/s/_lease.json") == b"first"


def test_racing_creates_have_one_winner(store) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        if store.create_bytes("runs/r/race/_lease.json", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.get_bytes("runs/r/race/_lease.json") == str(wins[0]).encode()


def test_live_lease_is_refused_naming_the_holder(store) -> None:
    clock = Clock()
    first = StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=30, owner="pod t2s-r-sft-abc", clock=clock)
    first.acquire()
    second = StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=30, owner="pod t2s-r-sft-xyz", clock=clock,
                       sleep=_no_sleep)
    clock.now += 30
    with pytest.raises(LeaseHeld, match=r"pod t2s-r-sft-abc.*last heartbeat 30s ago") as info:
        second.acquire()
    assert info.value.exit_code == 1
    first.renew()
    clock.now += 50  # 80s after start, 50s after the renewal: still live
    with pytest.raises(LeaseHeld):
        second.acquire()
    first.release()
    second.acquire()  # released: free at once
    doc = json.loads(store.get_bytes(f"runs/r/sft/{LEASE_NAME}"))
    assert doc["owner"] == "pod t2s-r-sft-xyz" and {"host", "pid", "started_utc", "heartbeat_utc"} <= set(doc)


def test_expired_lease_is_taken_over_and_the_loser_cannot_publish(store, capsys) -> None:
    clock = Clock()
    old = StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=10, owner="pod old", clock=clock)
    old.acquire()
    clock.now += 61
    new = StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=10, owner="pod new", clock=clock)
    new.acquire()
    assert "taking over an expired step lease" in capsys.readouterr().err
    old.renew()  # the old runner wakes up: its heartbeat finds another token
    with pytest.raises(LeaseLost, match="pod new"):
        old.check()
    old.release()  # not ours any more: left alone
    assert json.loads(store.get_bytes(f"runs/r/sft/{LEASE_NAME}"))["owner"] == "pod new"
    new.check()


def test_lease_of_a_dead_local_process_is_taken_at_once(store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    ghost = StepLease(store, "runs/r/sft", ttl_s=600, heartbeat_s=10, owner="ghost")
    rec = ghost._record(ghost._clock())
    store.put_bytes(ghost.key, json.dumps({**json.loads(rec.to_bytes()), "pid": int(dead.stdout)}).encode())
    StepLease(store, "runs/r/sft", ttl_s=600, heartbeat_s=10, owner="me").acquire()


def test_heartbeat_thread_keeps_the_lease_fresh(store) -> None:
    with StepLease(store, "runs/r/hb", ttl_s=1.0, heartbeat_s=0.2, owner="beating") as lease:
        first = json.loads(store.get_bytes(lease.key))["heartbeat"]
        threading.Event().wait(0.7)
        assert json.loads(store.get_bytes(lease.key))["heartbeat"] > first
        lease.check()
    assert not store.exists(lease.key)


def test_a_stale_lease_is_waited_for_then_taken_over(store, capsys) -> None:
    """Missed heartbeats (a killed pod): the next runner waits for the expiry instead of exiting 1."""
    clock = Clock()
    dead = StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=10, owner="pod oom-killed", clock=clock)
    dead.acquire()
    clock.now += 25  # two heartbeats missed, 35 s before the expiry
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.now += s

    StepLease(store, "runs/r/sft", ttl_s=60, heartbeat_s=10, owner="pod retry", clock=clock, sleep=sleep).acquire()
    assert 35 <= sum(slept) <= 46
    err = capsys.readouterr().err
    assert "waiting for it to expire" in err and "taking over an expired step lease" in err
    assert json.loads(store.get_bytes(f"runs/r/sft/{LEASE_NAME}"))["owner"] == "pod retry"
