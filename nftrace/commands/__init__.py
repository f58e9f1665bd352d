"""One module per `nftrace` sub-command: register(subparsers) and run(args) -> exit status."""
