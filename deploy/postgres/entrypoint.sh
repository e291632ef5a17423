#!/bin/sh
# The entry point of the ecommerce/postgres image (deploy/postgres/image.sh):
# on an empty data directory, make a cluster whose superuser `postgres`
# has the password in POSTGRES_PASSWORD_FILE (a Compose or Swarm secret);
# with POSTGRES_APP_USER and POSTGRES_APP_PASSWORD_FILE, also a role of
# that name with that password, owning a database of the same name (what
# the catalogs log in as: not the superuser). Then run PostgreSQL in the
# foreground as this (non-root) user. Only shell
# built-ins and PostgreSQL's own programs: the image has nothing else.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD_FILE:-}" ] || [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
    echo "postgres: the data directory $PGDATA is empty and POSTGRES_PASSWORD_FILE (${POSTGRES_PASSWORD_FILE:-unset}) names no readable file: set it to a file holding the superuser's password (a secret), so that a new cluster can be made" >&2
    exit 1
  fi
  if [ -n "${POSTGRES_APP_USER:-}" ]; then
    if [ -z "${POSTGRES_APP_PASSWORD_FILE:-}" ] || [ ! -r "$POSTGRES_APP_PASSWORD_FILE" ]; then
      echo "postgres: POSTGRES_APP_USER is set and POSTGRES_APP_PASSWORD_FILE (${POSTGRES_APP_PASSWORD_FILE:-unset}) names no readable file: set it to a file holding that role's password" >&2
      exit 1
    fi
    read -r app_password <"$POSTGRES_APP_PASSWORD_FILE" || true
    # Quoted into SQL below: refuse what would need escaping.
    case "$POSTGRES_APP_USER/$app_password" in
      */ | *[!A-Za-z0-9_/-]* | */*/*)
        echo "postgres: POSTGRES_APP_USER and the password in $POSTGRES_APP_PASSWORD_FILE must be non-empty and hold only letters, digits, '_' and '-'" >&2
        exit 1 ;;
      postgres/* | pg_*)
        echo "postgres: POSTGRES_APP_USER=$POSTGRES_APP_USER names the superuser or a reserved role; give the application a role of its own, such as catalog" >&2
        exit 1 ;;
    esac
  fi
  echo "postgres: no cluster in $PGDATA; making one (superuser postgres, password from $POSTGRES_PASSWORD_FILE)"
  initdb --username=postgres --pwfile="$POSTGRES_PASSWORD_FILE" \
    --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C --no-instructions >/dev/null
  # Connections from other containers, with the password only.
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ -n "${POSTGRES_APP_USER:-}" ]; then
    echo "postgres: making the role and database $POSTGRES_APP_USER (password from $POSTGRES_APP_PASSWORD_FILE)"
    # Single-user mode: one statement a line, each in its own transaction;
    # a failed statement is never written to the log (it holds the
    # password), and fails the start, since the server still starts after
    # an error here.
    output=$(printf '%s\n' \
      "CREATE ROLE \"$POSTGRES_APP_USER\" LOGIN PASSWORD '$app_password';" \
      "CREATE DATABASE \"$POSTGRES_APP_USER\" OWNER \"$POSTGRES_APP_USER\";" |
      postgres --single -D "$PGDATA" -c jit=off -c log_min_error_statement=panic postgres 2>&1)
    case "$output" in
      *ERROR* | *FATAL*)
        echo "postgres: making the role $POSTGRES_APP_USER failed; this data directory is not usable, remove the volume and start again:" >&2
        echo "$output" >&2
        exit 1 ;;
    esac
  fi
fi

# The socket in /tmp (a tmpfs in the stacks): the root file system is
# read-only, and /var/run/postgresql is not in the image. No JIT: the image
# leaves LLVM out.
exec postgres -c listen_addresses='*' -c unix_socket_directories=/tmp -c jit=off "$@"
