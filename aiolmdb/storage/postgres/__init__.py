"""The PostgreSQL engine: ``aiolmdb.open("postgresql://...")``.

Needs the ``postgres`` extra (``pip install aiolmdb[postgres]``: psycopg 3,
psycopg_pool and greenlet). Imported only when a location names it.
"""

from .engine import PostgresEngine
from .layout import LAYOUT_VERSION

__all__ = ["LAYOUT_VERSION", "PostgresEngine"]
