"""Experiment hook (bench --switch-interval): set the GIL switch interval of a server process
without editing it, to test a proposed fix. Only on sys.path when the flag is given."""

import os
import sys

if os.environ.get("BENCH_SWITCH_INTERVAL"):
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
