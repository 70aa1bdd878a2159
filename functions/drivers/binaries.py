"""Which database servers are installed here, and their versions (for the local catalog)."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class InstalledServer:
    datastore: str  # "postgresql", "mariadb" or "mysql"
    manager: str  # the guest agent driver that runs it
    version: str  # e.g. "15.19", "10.11.19"
    binary: str


def _version_of(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out.split("Ver", 1)[-1] if "Ver" in out else out)
    return match.group(1) if match else None


def detect() -> list[InstalledServer]:
    found: list[InstalledServer] = []
    for postgres in sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres")):
        version = _version_of(postgres)
        if version:
            found.append(InstalledServer("postgresql", "postgresql", version, postgres))
    mysqld = next((p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld", shutil.which("mariadbd")) if p and Path(p).exists()), None)
    if mysqld:
        out = subprocess.run([mysqld, "--version"], capture_output=True, text=True, timeout=20).stdout
        version = _version_of(mysqld)
        if version:
            # A MySQL-compatible server is offered under its own name: mariadb, or mysql.
            name = "mariadb" if "mariadb" in out.lower() else "mysql"
            found.append(InstalledServer(name, "mariadb", version, mysqld))
    return found
