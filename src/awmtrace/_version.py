"""The package version: the single source (hatch reads it at build time; everything else imports it from here)."""

__version__ = "0.1.0"
