"""Name rules for databases, users and hosts, per datastore; a 400 says which rule failed.

MariaDB follows Trove's MySQL rules (trove/common/db/mysql/models.py), with MariaDB's own
length limits. PostgreSQL quotes every identifier, so names are taken literally: only the
length (63 bytes), NUL and the characters that cannot travel in a URL path are refused.
"""

from __future__ import annotations

import ipaddress
import re

from functions.core.errors import BadRequest

_MYSQL_DB = re.compile(r"^[A-Za-z0-9_-]+[\s?#@]*[A-Za-z0-9_-]+$|^[A-Za-z0-9_-]$")
_MYSQL_FORBIDDEN = set("'\";`,/\\")
_HOST = re.compile(r"^[A-Za-z0-9._%:-]+(/[0-9.]+)?$")

RESERVED_DATABASES = {
    "postgresql": {"postgres", "template0", "template1", "os_admin"},
    "mariadb": {"mysql", "information_schema", "performance_schema", "sys", "lost+found"},
}
RESERVED_USERS = {
    "postgresql": {"postgres", "os_admin", "root"},
    "mariadb": {"root", "os_admin", "mysql", "mariadb.sys"},
}


def kind_of(manager: str) -> str:
    return "postgresql" if manager == "postgresql" else "mariadb"


def check_database(kind: str, name: object) -> str:
    name = _text("Database", name)
    if kind == "postgresql":
        _pg_identifier("Database", name)
    else:
        if len(name) > 64:
            raise BadRequest(f"Database name '{name[:70]}' is invalid: it is longer than 64 characters.")
        if not _MYSQL_DB.match(name) or _MYSQL_FORBIDDEN & set(name):
            raise BadRequest(
                f"Database name '{name}' is invalid: only letters, digits, '_' and '-' are allowed "
                "(spaces, '?', '#' and '@' only in the middle)."
            )
    if name.lower() in RESERVED_DATABASES[kind]:
        raise BadRequest(f"Database name '{name}' is reserved.")
    return name


def check_user(kind: str, name: object) -> str:
    name = _text("User", name)
    if "@" in name:
        raise BadRequest(f"User name '{name}' is invalid: '@' separates the user from its host in URLs.")
    if kind == "postgresql":
        _pg_identifier("User", name)
        if name.startswith("pg_"):
            raise BadRequest(f"User name '{name}' is invalid: the prefix 'pg_' is reserved by PostgreSQL.")
    else:
        if len(name) > 80:
            raise BadRequest(f"User name '{name[:90]}' is invalid: it is longer than 80 characters.")
        if name != name.strip() or _MYSQL_FORBIDDEN & set(name):
            raise BadRequest(
                f"User name '{name}' is invalid: no leading or trailing spaces and none of "
                "' \" ; ` , / \\ @ are allowed."
            )
    if name.lower() in RESERVED_USERS[kind]:
        raise BadRequest(f"User name '{name}' is reserved.")
    return name


def check_password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise BadRequest("The password is invalid: a non-empty string is required.")
    if password != password.strip() or any(c in password for c in "'\";`,\\/\0"):
        raise BadRequest(
            "The password is invalid: no leading or trailing spaces and none of ' \" ; ` , / \\ are allowed."
        )
    if len(password) > 255:
        raise BadRequest("The password is invalid: it is longer than 255 characters.")
    return password


def check_host(kind: str, host: object) -> str:
    if host in (None, ""):
        return "%"
    if not isinstance(host, str):
        raise BadRequest("The host is invalid: a string is required.")
    if kind == "postgresql":
        if host != "%":
            raise BadRequest("The host is invalid: PostgreSQL users are not host-qualified; use '%'.")
        return host
    if host == "%" or host == "localhost":
        return host
    try:
        ipaddress.ip_network(host.replace("%", "0"), strict=False)
        return host
    except ValueError:
        pass
    if not _HOST.match(host) or len(host) > 255:
        raise BadRequest(f"The host '{host}' is invalid: use an IP address, a CIDR, a host name or '%' wildcards.")
    return host


def _text(what: str, name: object) -> str:
    if not isinstance(name, str) or name == "":
        raise BadRequest(f"{what} name is invalid: a non-empty string is required.")
    if "\0" in name or "/" in name:
        raise BadRequest(f"{what} name '{name!r}' is invalid: it may not contain NUL or '/'.")
    return name


def _pg_identifier(what: str, name: str) -> None:
    if len(name.encode()) > 63:
        raise BadRequest(f"{what} name '{name[:70]}' is invalid: it is longer than 63 bytes.")
