"""Helpers of the reliability tests: child-process programs (run with ``sys.executable``)
and running code in a forked child."""
