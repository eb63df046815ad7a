"""The ``companion`` subcommands, one module per command or family; ``companion.cli`` parses and dispatches.

Each module imports what its command needs inside the command, so ``companion --help`` and the
daemon load only what they use.
"""
