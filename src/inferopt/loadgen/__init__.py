"""A load generator for Open Inference Protocol (KServe v2) servers: closed loop (N requests
outstanding) and open loop (requests sent on a schedule, latency measured from the scheduled
time so a slow server cannot hide its queueing), measurement windows until stable, sweeps,
and a report (console, JSON, HTML). See docs/bench.md.
"""
