"""``python -m awmtrace`` runs the ``awm`` command."""

from awmtrace.cli import run

if __name__ == "__main__":
    run()
