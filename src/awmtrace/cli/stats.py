"""`awm` subcommands: stats (being written; registers nothing yet)."""
