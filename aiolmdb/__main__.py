"""``python -m aiolmdb``: the ``aiolmdb`` console script."""

from .cli import main

main()
