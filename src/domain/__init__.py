"""Plain types that every stage may import: it imports nothing of ours but `isdr.errors`.

The stages (receiving, the post daemon, the poller, the deliverer) meet in the database and
the file tree; what they hand each other through them is typed here, once: a fingerprint,
a destination, an output file, the states of series, jobs and deliveries, the clock and the
backoff rule. `tests/unit/test_architecture.py` keeps the import rules true.
"""
