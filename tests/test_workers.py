"""`python -m chatproject.serve --workers N` (chatproject.workers): N server processes on one
port, against PostgreSQL and Redis. Which worker holds a client's connection is read from
/proc (the server-side socket whose peer is the client's port, among each worker's fds)."""

import os
import signal
import subprocess
import time

import pytest
from websockets.exceptions import ConnectionClosed

from apps.rooms import services as rooms
from apps.rooms.models import Room
from chatproject import workers
from tests import factories
from tests.support.processes import ServerProcess
from tests.support.services import PYTHON, ROOT
from tests.support.wsclient import WS

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def wait_children(pid: int, count: int, timeout: float = 30.0, exclude=()) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in children(pid) if c not in exclude]
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"supervisor {pid} has children {children(pid)}, wanted {count}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def server_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of the TCP connection from client_port."""
    with open("/proc/net/tcp") as handle:
        next(handle)
        for line in handle:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                return inode
    return None


def worker_of(client: WS, server_port: int, pids: list[int]) -> int:
    client_port = client.ws.socket.getsockname()[1]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        inode = server_inode(server_port, client_port)
        for pid in pids:
            if inode and inode in socket_inodes(pid):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def spread(url, token, port, pids, timeout=60.0) -> dict[int, WS]:
    """One open socket on each worker. The kernel picks the worker (and a worker still starting
    accepts nothing yet): connect until each has one."""
    held = {}
    deadline = time.monotonic() + timeout
    while len(held) < len(pids) and time.monotonic() < deadline:
        try:
            client = WS(url, token=token)
        except TimeoutError:  # its worker is still starting: the handshake waits in the queue
            continue
        pid = worker_of(client, port, pids)
        if pid in held:
            client.close()
        else:
            held[pid] = client
    assert set(held) == set(pids), f"connections reached only {sorted(held)} of {pids}"
    return held


def test_two_workers_share_one_port_and_the_room(child_env, user, other_user, room):
    rooms.room_join(room=room, user=other_user)
    server = ServerProcess(child_env, workers=2).start()
    try:
        pids = wait_children(server.proc.pid, 2)
        token, other_token = factories.make_token(user), factories.make_token(other_user)
        readers = spread(server.ws_url, token, server.port, pids)
        for client in readers.values():
            client.subscribe(room.pk, since=0)
        # A sender on each worker: every reader sees every message, in one seq order.
        senders = spread(server.ws_url, other_token, server.port, pids)
        for i, client in enumerate(senders.values()):
            for n in range(3):
                assert client.send_message(room.pk, body=f"w{i} {n}")["type"] == "ack"
        for client in readers.values():
            client.wait_seq(room.pk, 6)
            assert client.seqs(room.pk) == [1, 2, 3, 4, 5, 6]
        first, second = readers.values()
        assert [e["id"] for e in first.events(room.pk)] == [e["id"] for e in second.events(room.pk)]
    finally:
        assert server.stop() == 0


def test_sigterm_closes_every_workers_sockets_with_1012(child_env, user):
    server = ServerProcess(child_env, workers=2).start()
    pids = wait_children(server.proc.pid, 2)
    clients = spread(server.ws_url, factories.make_token(user), server.port, pids)
    for client in clients.values():
        client.hello()
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)  # the supervisor only, as `docker stop` does
    assert [client.wait_closed() for client in clients.values()] == [1012, 1012]
    assert server.proc.wait(30) == 0
    assert time.monotonic() - started < 15
    assert not [
        pid
        for pid in pids
        if os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    ]


def test_a_killed_worker_is_replaced_and_its_clients_resume_on_the_same_port(child_env, user, room):
    server = ServerProcess(child_env, workers=2).start()
    try:
        pids = wait_children(server.proc.pid, 2)
        token = factories.make_token(user)
        clients = spread(server.ws_url, token, server.port, pids)
        victim, survivor = pids
        for client in clients.values():
            client.subscribe(room.pk, since=0)
        first = clients[survivor].send_message(room.pk, body="before")
        clients[victim].wait_seq(room.pk, first["event"]["seq"])
        os.kill(victim, signal.SIGKILL)
        with pytest.raises((ConnectionClosed, OSError)):
            while True:
                clients[victim].recv(timeout=10)
        seen = clients[victim].seqs(room.pk)
        # The survivor keeps its socket and commits while the victim is replaced.
        for n in range(3):
            assert clients[survivor].send_message(room.pk, body=f"during {n}")["type"] == "ack"
        replacement = wait_children(server.proc.pid, 1, exclude=(survivor, victim))
        assert set(children(server.proc.pid)) == {survivor, replacement[0]}
        # The victim's client comes back on the same port (whichever worker takes it) and
        # resumes from what it had: nothing lost, nothing twice.
        back = WS(server.ws_url, token=token)
        back.subscribe(room.pk, since=seen[-1])
        head = Room.objects.get(pk=room.pk).last_seq
        back.wait_seq(room.pk, head)
        assert seen + back.seqs(room.pk) == list(range(1, head + 1))
        # The replacement accepts on the same port too.
        spread(server.ws_url, token, server.port, [survivor, replacement[0]])
    finally:
        assert server.stop() == 0


def run_serve(args, env, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "chatproject.serve", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_several_workers_are_refused_on_the_in_memory_layer(child_env):
    env = {k: v for k, v in child_env.items() if k != "REDIS_URL"}
    done = run_serve(["--port", "1", "--workers", "2"], env)
    assert done.returncode == 2
    assert "several workers need the Redis channel layer" in done.stderr
    done = run_serve(["--port", "1", "--workers", "none"], child_env)
    assert done.returncode == 2
    assert "--workers must be a number" in done.stderr


def test_worker_count_defaults(monkeypatch, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}
    monkeypatch.delenv("CHAT_WORKERS", raising=False)
    assert workers.worker_count(None) == workers.cores()
    assert workers.worker_count("auto") == workers.cores()
    monkeypatch.setenv("CHAT_WORKERS", "3")
    assert workers.worker_count(None) == 3
    assert workers.worker_count("1") == 1
    with pytest.raises(workers.WorkersRefused):
        workers.worker_count("0")
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.delenv("CHAT_WORKERS")
    assert workers.worker_count(None) == 1
