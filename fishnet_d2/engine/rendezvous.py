"""The store a worker started by torchrun (or by a job script that sets torchrun's variables) makes
its process group with: the store at ``MASTER_ADDR:MASTER_PORT``, under a key prefix that only
the workers of this start share.

Why a prefix of its own: torchrun keeps one store for every start of its workers (the static
rendezvous of ``--master-port`` always; ``--rdzv-backend c10d``, as ``--standalone`` uses it,
unless ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), and tells the workers to use it
(``TORCHELASTIC_USE_AGENT_STORE``). ``init_process_group(init_method="env://")`` then writes its
keys (GLOO's addresses of every rank, the barriers' counters) under the same names at every start,
so the workers torchrun restarts after a failure can read the keys of the workers that died:
GLOO connects to their addresses ("Gloo connectFullMesh failed ... Connection refused") or waits
for peers that never come (a hang), depending on which worker of the new start writes first.

``TORCHELASTIC_RESTART_COUNT`` would separate the starts of one machine, not those of several:
an agent restarted for a failure counts it, one restarted because another machine rejoined does
not (torch's elastic agent: "membership changes do not count as retries"). So the workers agree
on a fresh prefix through the store itself, in a way stale keys cannot fool (:func:`agree_on_prefix`).
"""

import os
import time
import uuid
from datetime import timedelta

import torch.distributed as dist

__all__ = ["agree_on_prefix", "launcher_store", "process_group_store"]

_ROOT = "fishnet_d2/process_group"
_POLL_S = 0.05  # between two looks of a rank for its welcome
_REREAD_S = 1.0  # a rank not welcomed within this long reads the token again


def launcher_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The store at ``MASTER_ADDR:MASTER_PORT`` as ``init_method="env://"`` connects to it: torchrun's
    agent's (``TORCHELASTIC_USE_AGENT_STORE=True``), else one that rank 0 hosts."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    return dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, multi_tenant=True)


def _lead(store: dist.Store, world_size: int, root: str, deadline: float) -> str:
    """Rank 0: publish a new token; once every other rank has answered under it (with a nonce of
    its own), welcome each nonce."""
    token = uuid.uuid4().hex
    joins = [f"{root}/{token}/join/{rank}" for rank in range(1, world_size)]
    store.set(f"{root}/token", token)
    if not joins:
        return token
    try:
        store.wait(joins, timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
    except dist.DistStoreError:
        missing = [rank for rank, key in enumerate(joins, 1) if not store.check([key])]
        raise TimeoutError(f"rank 0: ranks {missing} did not join the process group in time") from None
    nonces = [nonce.decode() for nonce in store.multi_get(joins)]
    store.multi_set([f"{root}/{token}/welcome/{nonce}" for nonce in nonces], [token] * len(nonces))
    return token


def _join(store: dist.Store, rank: int, root: str, deadline: float) -> str:
    """Rank > 0: answer the token in the store with a new nonce until rank 0 welcomes that nonce
    under it; the token read may be an earlier start's, whose rank 0 is gone: read it again each
    second. (Polled with ``check``: a ``wait`` that times out prints a warning.)"""
    nonce = uuid.uuid4().hex
    while True:
        token = store.get(f"{root}/token").decode()  # waits for the first token of the run
        store.set(f"{root}/{token}/join/{rank}", nonce)
        welcome = f"{root}/{token}/welcome/{nonce}"
        reread = time.monotonic() + _REREAD_S
        while time.monotonic() < reread:
            if store.check([welcome]):
                return token
            time.sleep(_POLL_S)
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: rank 0 did not welcome this rank into the process group in time")


def agree_on_prefix(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> str:
    """A key prefix that every worker of this start gets, and no worker of another start: rank 0
    draws a token; each other rank answers the token it reads with a nonce of its own, and again
    each second with the token it reads then, until rank 0 welcomes that nonce. A token left by an
    earlier start is never answered by a welcome, since the rank 0 that drew it is gone; a
    welcome cannot be an earlier start's, since the nonce is new."""
    root = f"{_ROOT}/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    deadline = time.monotonic() + timeout.total_seconds()
    token = _lead(store, world_size, root, deadline) if rank == 0 else _join(store, rank, root, deadline)
    return f"{root}/{token}/"


def process_group_store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The launcher's store (:func:`launcher_store`) under this start's own prefix
    (:func:`agree_on_prefix`), for ``init_process_group(store=...)``."""
    store = launcher_store(rank, world_size, timeout)
    return dist.PrefixStore(agree_on_prefix(store, rank, world_size, timeout), store)
