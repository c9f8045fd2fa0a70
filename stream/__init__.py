"""The live pipeline: ZeroMQ protocol, ingest, exposure-window synchroniser, workers (SPEC §7)."""
