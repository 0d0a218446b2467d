"""The prefix the workers of one torchrun start agree on (fishnet_d2.engine.rendezvous): the same
for every worker of a start, never one of an earlier start whose keys are still in torchrun's
store, whichever worker comes first. Threads stand for the workers here, one TCPStore client
each, against a store that stands for torchrun's agent's; tests/test_torchrun.py restarts real
workers under torchrun."""

import threading
import time
from datetime import timedelta
from typing import Dict, List

import pytest
import torch.distributed as dist

from fishnet_d2.engine.rendezvous import agree_on_prefix

TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def agent_store(monkeypatch):
    """A store as torchrun's agent hosts it (on a free port of 127.0.0.1), and its address."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test-run")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=TIMEOUT, multi_tenant=True)
    return store, store.port


def start(port: int, world_size: int, delays: Dict[int, float]) -> List[str]:
    """Run ``agree_on_prefix`` for every rank at once, rank r after ``delays.get(r, 0)`` seconds, each
    with a client of its own; each rank's result (a prefix, or the exception it raised)."""
    results: List = [None] * world_size

    def worker(rank: int) -> None:
        time.sleep(delays.get(rank, 0.0))
        client = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=TIMEOUT)
        try:
            results[rank] = agree_on_prefix(client, rank, world_size, TIMEOUT)
        except Exception as e:  # reported by the test
            results[rank] = e

    threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_every_worker_of_a_start_gets_one_prefix_of_its_own(agent_store):
    _, port = agent_store
    first = start(port, 3, {})
    assert all(isinstance(p, str) for p in first), first
    assert len(set(first)) == 1 and first[0].startswith("fishnet_d2/process_group/test-run/")
    second = start(port, 3, {})
    assert len(set(second)) == 1 and second[0] != first[0]


@pytest.mark.parametrize("late_rank", [0, 2])
def test_the_keys_of_an_earlier_start_do_not_fool_a_restarted_worker(agent_store, late_rank):
    """After a start whose keys remain (its token and every answer), the restarted ranks agree on a
    new prefix, also when the others read the store before the new rank 0 writes to it."""
    _, port = agent_store
    [earlier] = set(start(port, 3, {}))
    restarted = start(port, 3, {late_rank: 1.5})
    assert all(isinstance(p, str) for p in restarted), restarted
    assert len(set(restarted)) == 1 and restarted[0] != earlier


def test_a_rank_that_never_joins_is_named(agent_store):
    store, port = agent_store
    client = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=TIMEOUT)
    with pytest.raises(TimeoutError, match=r"rank 0: ranks \[1\] did not join the process group"):
        agree_on_prefix(client, 0, 2, timedelta(seconds=0.5))
    # A rank whose rank 0 is gone (its token stays in the store) is not welcomed by anyone.
    with pytest.raises(TimeoutError, match="rank 1: rank 0 did not welcome this rank"):
        agree_on_prefix(client, 1, 2, timedelta(seconds=1.5))
