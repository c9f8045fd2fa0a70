"""One module per CLI verb, each with ``register(subparsers)``. Only argparse and thin glue live here."""
