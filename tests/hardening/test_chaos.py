"""The chaos run under load, shortened for CI (bench/chaos; `python -m bench.chaos` is the full one).

Faults: SIGKILL of the Celery worker, a Redis restart, the broker stopped and started again
(10 s here, 30 s in the bench command), a PostgreSQL restart (a private cluster: sends answer
`unavailable` meanwhile; the servers and the worker reconnect by themselves), SIGKILL of one of
the two server processes. Nothing acknowledged may be lost, nothing duplicated after dedupe,
every resumed client gapless.
"""

import pytest

from bench.chaos.scenario import FAULTS, ChaosConfig, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.kafka]


def test_nothing_acknowledged_is_lost_or_duplicated_through_five_faults():
    figures = run_chaos(
        ChaosConfig(
            clients=8, rooms=3, rate=2.0, phase=4.0, broker_outage=10.0, settle_timeout=60.0
        )
    )
    print({k: v for k, v in figures.items() if k != "log_files"})
    assert figures["faults_injected"] == FAULTS == 5, figures["faults"]
    # Both servers outlived the PostgreSQL restart, and the worker never exited by itself.
    assert figures["servers_alive_after_postgres"] == 2, figures
    assert figures["worker_crashes"] == [], figures["worker_crashes"]
    # Sends during the PostgreSQL outage were answered `unavailable` (and resent), not hung.
    assert figures["client_errors"].get("unavailable", 0) > 0, figures["client_errors"]
    assert figures["messages_acked"] > 100
    assert figures["clients_resumed"] >= 4  # the killed server's clients, at least
    assert figures["lost_acked_messages"] == 0, figures
    assert figures["lost_kafka_events"] == 0, figures
    assert figures["phantom_kafka_events"] == 0, figures
    assert figures["duplicated_after_dedupe"] == 0, figures
    assert figures["kafka_out_of_order"] == 0, figures
    assert figures["kafka_bad_key_or_header"] == 0, figures
    assert figures["room_log_gaps"] == 0, figures
    assert figures["clients_incomplete"] == 0, figures["incomplete_detail"]
    assert figures["per_socket_gaps"] == 0 and figures["per_socket_duplicates"] == 0, figures
