"""`awm` subcommands: hub (being written; registers nothing yet)."""
