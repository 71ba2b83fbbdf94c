"""The chaos run (issue 8): faults under load, then every promise of the contract checked.

`python -m bench.chaos` (see __main__.py); tests/hardening/test_chaos.py runs a shorter one.
"""
