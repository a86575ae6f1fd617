"""The node as several processes: a parent that listens and holds the limits, and workers
that adopt its socket and serve (``workers:`` in the configuration)."""
