"""``spikereveal keys``: CURVE key pairs for serve, workers, viewers and rigs (see stream/README.md, 'Keys')."""

from __future__ import annotations

from spikereveal.commands._types import output_dir_text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="CURVE key pairs that authenticate and encrypt serve's ports (workers, viewers, the rig)",
        description=(
            "ZeroMQ ports without keys admit anyone who reaches them. 'keys generate' writes a key pair: "
            "NAME.key (the public key: copy it into the allow-list folder of every peer that must admit this "
            "host) and NAME.key_secret (public + secret key, mode 0600: it never leaves this host). The files "
            "are those of zmq.auth.create_certificates."
        ),
    )
    verbs = parser.add_subparsers(dest="keys_command", metavar="VERB")
    verbs.required = True
    generate = verbs.add_parser("generate", help="write a new key pair NAME.key + NAME.key_secret into a folder",
                                description="Write DIR/NAME.key (public) and DIR/NAME.key_secret (mode 0600).")
    generate.add_argument("--out", required=True, type=output_dir_text, metavar="DIR",
                          help="folder for the two files (created if missing)")
    generate.add_argument("--name", default="spikereveal", metavar="NAME",
                          help="file name of the pair, e.g. serve, worker1, viewer (default spikereveal)")
    generate.add_argument("--force", action="store_true", help="replace an existing pair of that name")
    generate.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from spikereveal.stream.security import generate_keys

    public, secret = generate_keys(args.out, args.name, force=args.force)
    print(f"wrote {public} (public: copy it into the allow-list folder of the peers that must admit this host)")
    print(f"wrote {secret} (secret, mode 0600: keep it on this host)")
    return 0
