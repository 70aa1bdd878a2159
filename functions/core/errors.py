"""Domain errors. They carry a message for the user and know nothing about HTTP;
functions/api/_http.py maps them to Trove's fault envelope in one table."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a user may see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(DomainError):
    """The request is malformed or fails validation."""


class Unauthorized(DomainError):
    """No valid credentials."""


class Forbidden(DomainError):
    """Valid credentials, but not for this resource."""


class NotFound(DomainError):
    def __init__(self, message: str, *, resource: str | None = None, id: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource
        self.id = id


class MethodNotAllowed(DomainError):
    pass


class Conflict(DomainError):
    pass


class UnprocessableEntity(DomainError):
    """The resource is not in a state that allows this (Trove's 422)."""


class OverLimit(DomainError):
    """Quota or rate limit exceeded (Trove's 413)."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotImplementedFeature(DomainError):
    """Trove's 501 for operations a datastore does not support."""


class ServiceUnavailable(DomainError):
    pass
