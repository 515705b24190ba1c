"""The load generator behind ``python -m benchmarks.load``.

- ``options``: what to run (the command line's values) and how it is split across processes.
- ``wire``: client frames encoded ahead of time, the timestamp carried inside broadcast messages.
- ``stats``: counters, latency samples (a bounded reservoir), percentiles, merging processes.
- ``worker``: one process's connections and the three workloads, on asyncio.
"""
