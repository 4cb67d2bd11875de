"""How rank 0 hands each model step to the follower ranks of a sharded model.

Every step of a sharded model starts with one message from rank 0 (the StateStore's allocate/free log, the
step's tokens and its BatchInfo lists); the followers cannot run their part of the step before it arrives, so
its latency is on the critical path of every decode step.

- `ShmChannel` (ranks on one host, the usual case): a mailbox in a shared-memory file. Rank 0 writes the
  pickled message and bumps a sequence number; each follower polls the sequence number, copies the message
  out and acknowledges it. A message costs a pickle and two memory copies (a few microseconds), against
  hundreds of microseconds for a gloo broadcast over TCP (two collectives: size, then bytes).
- `GlooChannel` (ranks on several hosts): `broadcast_object_list` on a gloo group of its own.

Both have `send(obj)` (rank 0) and `recv()` (followers). An idle follower polls with growing sleeps (at most
`_IDLE_SLEEP_S`), so an idle server costs no CPU worth mentioning and the first step after a pause waits at most
that long; while steps keep coming it spins and sees a new message within microseconds. A follower whose rank 0
dies stops waiting: it checks that rank 0's process still exists (same host) every `_LIVENESS_S` seconds.

Memory order: the writer stores the payload before the sequence number and readers load the sequence number
before the payload. x86-64 keeps stores in program order as seen by other cores (and loads likewise), which
is what this relies on; on other architectures `ShmChannel` is not used (`same_host_channel` picks gloo).
"""

from __future__ import annotations

import os
import pickle
import platform
import struct
import time
import uuid
from datetime import timedelta
from mmap import mmap
from typing import Any, Protocol

import torch.distributed as dist

_IDLE_SLEEP_S = 1e-3  # longest sleep of a waiting follower between two polls
_SPIN_S = 0.05  # a waiter first spins (yielding the core) this long before it starts sleeping
_LIVENESS_S = 1.0  # how often a waiting follower checks that rank 0 is alive
_CAPACITY = 4 * 2**20  # payload bytes per message chunk; larger messages travel in several chunks
_MESSAGE_TIMEOUT = timedelta(days=365)  # a follower of an idle server waits in the gloo group this long

# Header: sequence number, payload length of this chunk, 1 if more chunks follow, writer pid; then one
# acknowledged sequence number per reader; then one pid per reader; then the payload.
_HEAD = struct.Struct("<QQQQ")


class ChannelClosed(RuntimeError):
    """The other end is gone: rank 0 (no further message can come) or a follower (none will be taken)."""


class Channel(Protocol):
    """Rank 0 sends, every follower receives each message once, in order."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...

    def close(self) -> None: ...


class GlooChannel:
    """Messages as gloo broadcasts from rank 0 (works across hosts; each message costs two collectives)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group

    def send(self, obj: Any) -> None:
        dist.broadcast_object_list([obj], src=0, group=self.group)

    def recv(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def close(self) -> None:
        pass


class ShmChannel:
    """One writer (rank 0), `readers` followers on the same host, a single-slot mailbox in shared memory.

    Create on every rank with `ShmChannel.create(group)` (collective over the gloo `group`)."""

    def __init__(self, path: str, rank: int, readers: int, create: bool) -> None:
        self.rank, self.readers = rank, readers
        self._acks = _HEAD.size
        self._pids = _HEAD.size + 8 * readers
        self._payload = _HEAD.size + 16 * readers
        size = self._payload + _CAPACITY
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._buf = mmap(fd, size)
        finally:
            os.close(fd)
        self._seq = 0  # last sequence number written (rank 0) or read (followers)
        if create:
            _HEAD.pack_into(self._buf, 0, 0, 0, 0, os.getpid())
        else:
            struct.pack_into("<Q", self._buf, self._pids + 8 * (rank - 1), os.getpid())

    @classmethod
    def create(cls, group: dist.ProcessGroup) -> ShmChannel:
        """Rank 0 makes the file and names it to the others over `group`; removed from the file system once
        every rank has it mapped (the mapping lives on until each process exits)."""
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        box: list[Any] = [f"/dev/shm/minimax01-steps-{uuid.uuid4().hex}" if rank == 0 else None]
        if rank == 0:
            channel = cls(box[0], 0, world - 1, create=True)
        dist.broadcast_object_list(box, src=0, group=group)
        if rank != 0:
            channel = cls(box[0], rank, world - 1, create=False)
        dist.barrier(group=group)
        if rank == 0:
            os.unlink(box[0])
        return channel

    # ------------------------------------------------------------------ rank 0
    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        for lo in range(0, max(len(data), 1), _CAPACITY):
            chunk = data[lo:lo + _CAPACITY]
            self._wait_acks()
            self._buf[self._payload:self._payload + len(chunk)] = chunk
            self._seq += 1
            more = int(lo + _CAPACITY < len(data))
            # Length and flag first, the sequence number last: it publishes the chunk.
            struct.pack_into("<QQ", self._buf, 8, len(chunk), more)
            struct.pack_into("<Q", self._buf, 0, self._seq)

    def _wait_acks(self) -> None:
        """Until every follower has copied out the previous chunk (the slot is free again)."""
        waiter = _Waiter()
        last_check = time.monotonic()
        while any(struct.unpack_from("<Q", self._buf, self._acks + 8 * r)[0] != self._seq
                  for r in range(self.readers)):
            waiter.pause()
            now = time.monotonic()
            if now - last_check > _LIVENESS_S:
                last_check = now
                for r in range(self.readers):
                    pid = struct.unpack_from("<Q", self._buf, self._pids + 8 * r)[0]
                    if not _alive(pid):
                        raise ChannelClosed(f"rank {r + 1} (pid {pid}) has exited")

    # ------------------------------------------------------------------ followers
    def recv(self) -> Any:
        parts = []
        while True:
            self._wait_seq()
            length, more = struct.unpack_from("<QQ", self._buf, 8)
            parts.append(bytes(self._buf[self._payload:self._payload + length]))
            struct.pack_into("<Q", self._buf, self._acks + 8 * (self.rank - 1), self._seq)
            if not more:
                return pickle.loads(b"".join(parts))

    def _wait_seq(self) -> None:
        waiter = _Waiter()
        writer = struct.unpack_from("<Q", self._buf, 24)[0]
        last_check = time.monotonic()
        while struct.unpack_from("<Q", self._buf, 0)[0] == self._seq:
            waiter.pause()
            now = time.monotonic()
            if now - last_check > _LIVENESS_S:
                last_check = now
                if not _alive(writer):
                    raise ChannelClosed(f"rank 0 (pid {writer}) has exited")
        self._seq += 1

    def close(self) -> None:
        self._buf.close()


class _Waiter:
    """Spins (yielding the core) for `_SPIN_S`, then sleeps with a growing interval up to `_IDLE_SLEEP_S`."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.sleep = 1e-5

    def pause(self) -> None:
        if time.monotonic() - self.start < _SPIN_S:
            os.sched_yield()
        else:
            time.sleep(self.sleep)
            self.sleep = min(self.sleep * 2, _IDLE_SLEEP_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def open_channel(group: dist.ProcessGroup) -> Channel:
    """The step channel over `group` (a gloo group: collective, every rank calls it): shared memory when every
    rank runs on this host on x86-64 with /dev/shm (MINIMAX01_STEP_CHANNEL=gloo forces the gloo broadcast)."""
    hosts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(hosts, (platform.node(), platform.machine(), os.path.isdir("/dev/shm")), group=group)
    same_host = len(set(hosts)) == 1 and hosts[0][1] in ("x86_64", "AMD64") and hosts[0][2]
    if same_host and os.environ.get("MINIMAX01_STEP_CHANNEL", "shm") != "gloo":
        return ShmChannel.create(group)
    return GlooChannel(group)


def message_group() -> dist.ProcessGroup:
    """The gloo group the step channel is set up on (and, across hosts, travels on). Collective: every rank
    creates it, after the same groups. Its timeout is a year: a follower waits in it for as long as the server is
    idle (the default group's timeout would end an idle server)."""
    return dist.new_group(backend="gloo", timeout=_MESSAGE_TIMEOUT)
