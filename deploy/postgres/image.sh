#!/usr/bin/env bash
# Builds ecommerce/postgres:<major> (and :latest) from the PostgreSQL this
# machine has installed (Debian's postgresql package), since no base image
# can be pulled here.
#
#   deploy/postgres/image.sh          build it
#   deploy/postgres/image.sh --check  also start it on a new volume, wait
#                                     for its health check, and connect
#
# The image is FROM scratch (deploy/host-image.sh says why) and holds
# exactly what PostgreSQL needs at the same paths as on the host: its
# programs (postgres, initdb, pg_isready), its share and library
# directories, the shared libraries they load, the time zone database, dash
# as /bin/sh for the entry point, and /etc/passwd naming the user it runs as
# (999, not root: initdb refuses root).
#
# The data directory is /var/lib/postgresql/data, a volume; the socket is in
# /tmp. The health check is pg_isready over TCP.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

check=no
for arg in "$@"; do
  case "$arg" in
    --check) check=yes ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "postgres image: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bindir" ] && [ -x "$bindir/postgres" ] || {
  echo "postgres image: PostgreSQL is not installed (Debian: apt-get install postgresql)" >&2
  exit 1
}
major=$(basename "$(dirname "$bindir")")
libdir=/usr/lib/postgresql/$major/lib
sharedir=/usr/share/postgresql/$major
# shellcheck source=deploy/host-image.sh
. "$repo/deploy/host-image.sh"
image_start postgres

programs=("$bindir/postgres" "$bindir/initdb" "$bindir/pg_isready" /usr/bin/dash)
image_copy "${programs[@]}"
ln -s dash "$root/usr/bin/sh"
# PostgreSQL's modules, but not its LLVM JIT (libLLVM alone is 105 MB; the
# server runs with jit=off).
mkdir -p "$root$libdir"
for module in "$libdir"/*; do
  case "$(basename "$module")" in
    llvmjit*|bitcode) ;;
    *) cp -a "$module" "$root$libdir/" ;;
  esac
done
mkdir -p "$root$(dirname "$sharedir")"
cp -a "$sharedir" "$root$(dirname "$sharedir")/"
rm -rf "$root$sharedir/man"
mkdir -p "$root/usr/share"
cp -a /usr/share/zoneinfo "$root/usr/share/"

# Every shared library the programs and the modules load.
modules=()
for module in "$libdir"/*.so; do
  case "$(basename "$module")" in llvmjit*) ;; *) modules+=("$module") ;; esac
done
image_copy_libraries "${programs[@]}" "${modules[@]}"

mkdir -p "$root/var/lib/postgresql/data"
image_user postgres 999
chown -R 999:999 "$root/var/lib/postgresql"
chmod 700 "$root/var/lib/postgresql/data"
cp "$repo/deploy/postgres/entrypoint.sh" "$root/entrypoint.sh"
chmod 755 "$root/entrypoint.sh"

version=$("$bindir/postgres" --version | awk '{ print $3 }')
image_build "ecommerce/postgres:$major" ecommerce/postgres:latest <<DOCKERFILE
LABEL org.opencontainers.image.title="ecommerce postgres" \\
      org.opencontainers.image.description="PostgreSQL $version from this machine's Debian package, for the ecommerce stacks" \\
      org.opencontainers.image.version="$version"
ENV PATH=$bindir:/usr/bin:/bin PGDATA=/var/lib/postgresql/data TZ=UTC LANG=C
USER 999:999
EXPOSE 5432
VOLUME /var/lib/postgresql/data
HEALTHCHECK --interval=2s --timeout=4s --start-period=30s --retries=3 CMD ["pg_isready", "--host=127.0.0.1", "--port=5432", "--username=postgres", "--quiet"]
STOPSIGNAL SIGINT
ENTRYPOINT ["/entrypoint.sh"]
DOCKERFILE

[ "$check" = yes ] || exit 0

# Started on a new volume with a password secret and an application role,
# healthy, running as 999; over TCP the password is required and works;
# the role owns its database and is no superuser; restarted on the same
# volume, the data is still there.
name=ecommerce-postgres-check-$$
psql=$bindir/psql
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm "$name" >/dev/null 2>&1 || true
  rm -rf "$context"
}
trap cleanup EXIT
password=check-$$-$RANDOM
printf '%s\n' "$password" >"$context/password"
app_password=app$RANDOM$$
printf '%s\n' "$app_password" >"$context/app_password"
chmod 644 "$context/password" "$context/app_password"
start() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --name "$name" --read-only --tmpfs /tmp -p 127.0.0.1::5432 \
    -v "$name:/var/lib/postgresql/data" -v "$context/password:/run/secrets/password:ro" \
    -v "$context/app_password:/run/secrets/app_password:ro" \
    -e POSTGRES_PASSWORD_FILE=/run/secrets/password \
    -e POSTGRES_APP_USER=shop -e POSTGRES_APP_PASSWORD_FILE=/run/secrets/app_password \
    "ecommerce/postgres:$major" >/dev/null
  local state=starting
  for _ in $(seq 1 240); do
    state=$(docker inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
    [ "$state" = healthy ] && return 0
    [ "$(docker inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
    sleep 0.5
  done
  docker logs "$name" >&2 || true
  echo "postgres image: the container did not become healthy (state: $state)" >&2
  exit 1
}
start
port=$(docker port "$name" 5432/tcp | head -1 | sed 's/.*://')
uid=$(docker exec "$name" sh -c 'while read -r key value rest; do [ "$key" != Uid: ] || echo "$value"; done </proc/1/status')
[ "$uid" = 999 ] || { echo "postgres image: runs as uid $uid, not 999" >&2; exit 1; }
if PGPASSWORD=wrong "$psql" -h 127.0.0.1 -p "$port" -U postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "postgres image: a wrong password was accepted" >&2; exit 1
fi
PGPASSWORD=$password "$psql" -h 127.0.0.1 -p "$port" -U postgres -Atq \
  -c 'create table kept (n int)' -c 'insert into kept values (42)'
# The application's role owns its database, and is no superuser.
owner=$(PGPASSWORD=$app_password "$psql" -h 127.0.0.1 -p "$port" -U shop -d shop -Atc \
  "select pg_get_userbyid(datdba) || ' ' || (select rolsuper from pg_roles where rolname = current_user) from pg_database where datname = 'shop'")
[ "$owner" = "shop false" ] || { echo "postgres image: the role shop should own the database shop and not be a superuser (got '$owner')" >&2; exit 1; }
docker stop "$name" >/dev/null
start
port=$(docker port "$name" 5432/tcp | head -1 | sed 's/.*://')
kept=$(PGPASSWORD=$password "$psql" -h 127.0.0.1 -p "$port" -U postgres -Atc 'select n from kept')
[ "$kept" = 42 ] || { echo "postgres image: the data did not survive a restart (got '$kept')" >&2; exit 1; }
echo "postgres image: check passed (healthy on a new volume as uid 999, password required, the application's role owns its database, data kept across a restart)"
