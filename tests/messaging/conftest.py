import pytest

from tests import factories
from tests.support.processes import ServerProcess
from tests.support.wsclient import WS


@pytest.fixture
def start_server(child_env):
    """start(**env) -> a real server process; its `open(user)` gives a socket for that user.
    Every socket and process is stopped after the test."""
    procs, sockets = [], []

    def start(**env):
        proc = ServerProcess(dict(child_env, **{k: str(v) for k, v in env.items()})).start()
        procs.append(proc)

        def open_socket(user, **kwargs):
            client = WS(proc.ws_url, token=factories.make_token(user), **kwargs)
            sockets.append(client)
            return client

        proc.open = open_socket
        return proc

    yield start
    for client in sockets:
        client.close()
    for proc in procs:
        proc.stop()
