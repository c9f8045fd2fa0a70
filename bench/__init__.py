"""Benchmarks: kernels, transport, engines, pipeline; latency statistics and reports."""
