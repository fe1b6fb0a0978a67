"""Expiring leases in the database, so one job runs at a time across processes and hosts.

    holder = new_holder()
    if acquire("purge", holder, ttl=timedelta(minutes=2), now=now):
        try: ... renew("purge", holder, ...) ...
        finally: release("purge", holder)

A lease whose holder died is taken over once it expires, or at once when the holder was a
process on this host that no longer exists.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from gateway.store.db import write_transaction
from gateway.store.models import Lease


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_is_dead(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(name: str, holder: str, *, ttl: timedelta, now: datetime) -> bool:
    """Take the lease if it is free, expired, abandoned or already ours."""
    with write_transaction():
        lease = Lease.get_or_none(Lease.name == name)
        if lease is None:
            Lease.create(name=name, holder=holder, expires_at=now + ttl)
            return True
        free = lease.expires_at <= now or lease.holder == holder or _holder_is_dead(lease.holder)
        if not free:
            return False
        lease.holder, lease.expires_at = holder, now + ttl
        lease.save()
        return True


def renew(name: str, holder: str, *, ttl: timedelta, now: datetime) -> bool:
    """Extend our lease; False if it was lost (then stop the guarded work).

    Call it inside the write transaction of the work it guards: the lease cannot change hands
    before that transaction ends. A lease past its expiry that nobody took over is still ours,
    since no other holder ran in between.
    """
    updated: int = (
        Lease.update(expires_at=now + ttl)
        .where((Lease.name == name) & (Lease.holder == holder))
        .execute()
    )
    return updated == 1


def release(name: str, holder: str) -> None:
    with write_transaction():
        Lease.delete().where((Lease.name == name) & (Lease.holder == holder)).execute()


def holder_of(name: str) -> str | None:
    lease = Lease.get_or_none(Lease.name == name)
    return None if lease is None else str(lease.holder)
