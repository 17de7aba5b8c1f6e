"""Errors to HTTP responses: which status each error a request can meet maps to.

A 4xx says what was wrong with the request, in the error's own words (they name
the key or the index, which came from the client). A 5xx says only what kind of
failure it was: its message may name the server and its user, which stays in the log.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from aiolmdb.errors import (
    AiolmdbError,
    ClosedError,
    CommitUnknownError,
    DiskFullError,
    EncodeError,
    IndexNotReadyError,
    KeyExistsError,
    KeyNotFoundError,
    ReadersFullError,
    RetryableError,
    UnavailableError,
    UniqueViolationError,
)

from .ledger import InsufficientFundsError
from .schemas import Problem

logger = logging.getLogger(__name__)

#: Checked in order, so a subclass comes before its base; any other error is a 500.
STATUSES: tuple[tuple[type[Exception], HTTPStatus], ...] = (
    (KeyNotFoundError, HTTPStatus.NOT_FOUND),
    (KeyExistsError, HTTPStatus.CONFLICT),
    (UniqueViolationError, HTTPStatus.CONFLICT),
    (InsufficientFundsError, HTTPStatus.CONFLICT),
    # A key or value the coders refuse (an empty id, one over the key size limit):
    # the request's fault. Pydantic has checked the body's shape before.
    (EncodeError, HTTPStatus.UNPROCESSABLE_ENTITY),
    # A ConflictError or ConnectionLostError still there after transact's retries.
    (RetryableError, HTTPStatus.SERVICE_UNAVAILABLE),
    # Whether the commit happened is unknown: sending the request again is safe,
    # since every write is keyed by the client's id (a 409 then says it was applied).
    (CommitUnknownError, HTTPStatus.SERVICE_UNAVAILABLE),
    (UnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (IndexNotReadyError, HTTPStatus.SERVICE_UNAVAILABLE),
    (ClosedError, HTTPStatus.SERVICE_UNAVAILABLE),
    # Every LMDB reader slot taken: a moment's load, gone as reads end.
    (ReadersFullError, HTTPStatus.SERVICE_UNAVAILABLE),
    (DiskFullError, HTTPStatus.INSUFFICIENT_STORAGE),
)

#: Seconds a client is asked to wait before trying a 503 again.
RETRY_AFTER = 1


def status_for(error: Exception) -> HTTPStatus:
    """The HTTP status of a response to a request that failed with ``error``."""
    for error_type, status in STATUSES:
        if isinstance(error, error_type):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def problem_response(error: Exception) -> JSONResponse:
    """The response for ``error``: its status, a :class:`Problem` body, and for a 503
    a ``Retry-After`` header."""
    status = status_for(error)
    if status < HTTPStatus.INTERNAL_SERVER_ERROR:
        detail = str(error)
    else:
        logger.error("request failed with %s", status.phrase, exc_info=error)
        detail = status.phrase
    headers = {"Retry-After": str(RETRY_AFTER)} if status is HTTPStatus.SERVICE_UNAVAILABLE else {}
    body = Problem(detail=detail, error=type(error).__name__)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def _handle(_: Request, error: Exception) -> JSONResponse:
    return problem_response(error)


def install(app: FastAPI) -> None:
    """Answer every mapped error (and any other aiolmdb error, as a 500) with its status."""
    for error_type, _ in STATUSES:
        app.add_exception_handler(error_type, _handle)
    app.add_exception_handler(AiolmdbError, _handle)
