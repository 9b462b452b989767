"""Headless subcommands. Each module defines ``register(subparsers)`` and ``run(args) -> int``."""
