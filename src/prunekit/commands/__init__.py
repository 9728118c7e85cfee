"""CLI subcommands: each module exposes ``configure_parser(parser)`` and ``run(args) -> int``."""
