"""Version of the JSON result schema (``schema_version`` in every result).

Bump it when a field changes meaning or disappears; adding fields does not.
"""

SCHEMA_VERSION = 1
