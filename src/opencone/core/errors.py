"""Errors the services raise; the edge maps each to one HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """The request is valid but the computer's state does not allow it (e.g. terminated)."""

    status = 409


class InvalidInput(ServiceError):
    status = 422


class LimitReached(ServiceError):
    status = 429


class StartFailed(ServiceError):
    """The computer's processes could not be started (retrying may help)."""

    status = 503
