"""`python -m bench.chaos [--broker-outage 30] [--clients 12] ...`: run it, print the figures.

Exit status 0 when nothing was lost, duplicated or out of order, 1 otherwise.
"""

import argparse
import json
import sys

from bench.chaos.scenario import ChaosConfig, ok, run_chaos

FIGURES = [
    "faults_injected",
    "worker_crashes",
    "servers_alive_after_postgres",
    "messages_acked",
    "events_checked",
    "lost",
    "duplicated_after_dedupe",
    "kafka_redeliveries",
    "kafka_out_of_order",
    "clients",
    "clients_resumed",
    "clients_incomplete",
    "per_socket_gaps",
    "per_socket_duplicates",
    "seconds",
]


def main(argv=None) -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in vars(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    config = ChaosConfig(**{k: getattr(args, k) for k in vars(defaults)})
    figures = run_chaos(config)
    print()
    print("faults: " + "; ".join(figures["faults"]))
    for name in FIGURES:
        print(f"{name:>24}: {figures[name]}")
    if figures["incomplete_detail"]:
        print("incomplete clients:", figures["incomplete_detail"])
    if args.json:
        print(json.dumps(figures, default=str))
    verdict = ok(figures)
    print("RESULT:", "PASS" if verdict else "FAIL")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
