"""A small ledger web service on FastAPI: accounts, and transfers between them.

Run it with ``AIOLMDB_LOCATION=./data uvicorn examples.webservice.app:app`` from the
checkout (the location is a directory for LMDB, ``:memory:`` or a PostgreSQL URL).
docs/web-service.md walks through it.
"""
