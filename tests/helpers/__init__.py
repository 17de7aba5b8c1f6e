"""Helpers of the tests: child-process programs (run with ``sys.executable``), running
code in a forked child, and the collections several test files share."""
