"""Example applications built on aiolmdb (not installed with the library)."""
