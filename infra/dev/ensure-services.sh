#!/usr/bin/env bash
# Make sure the servers the tests need are installed and running on loopback.
# Tests use a real PostgreSQL (127.0.0.1:5432, user postgres, trust auth) for the shared
# database. Installs it from Debian's packages when it is missing (needs root).
set -euo pipefail

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# Instances run real PostgreSQL and MariaDB servers (as the `postgres` / `mysql` users the
# packages create), and the end-to-end tests connect with the `psql` and `mariadb` clients.
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
{ [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null 2>&1; } || missing+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
# Backups: MariaDB's physical backup tool (full and incremental, xbstream to stdout).
command -v mariadb-backup >/dev/null 2>&1 || missing+=(mariadb-backup)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-services: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! pg_ready; then
  echo "ensure-services: starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    echo "ensure-services: no PostgreSQL cluster configured under /etc/postgresql" >&2
    exit 1
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
fi
pg_ready || { echo "ensure-services: PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }

# The tests connect as postgres over TCP without a password and create throwaway databases.
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  echo "ensure-services: PostgreSQL refuses user postgres on 127.0.0.1 without a password;" \
       "allow trust auth for loopback in pg_hba.conf or set TROVELESS_TEST_PG_URL" >&2
  exit 1
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
fi
echo "ensure-services: PostgreSQL ready on 127.0.0.1:5432"
