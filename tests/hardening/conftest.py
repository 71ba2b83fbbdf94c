import pytest

from tests.support.processes import ServerProcess


@pytest.fixture
def start_server(child_env):
    """Start real server processes on this test's database, with setting overrides."""
    started = []

    def start(**overrides):
        env = dict(child_env, **{k: str(v) for k, v in overrides.items()})
        proc = ServerProcess(env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
