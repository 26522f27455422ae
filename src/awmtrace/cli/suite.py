"""`awm` subcommands: suite (being written; registers nothing yet)."""
