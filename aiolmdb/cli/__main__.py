"""``python -m aiolmdb.cli``: the ``aiolmdb`` console script."""

from . import main

main()
