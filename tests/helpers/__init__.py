"""Child-process programs for the reliability tests (run with ``sys.executable``)."""
