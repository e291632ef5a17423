#!/usr/bin/env bash
# Builds ecommerce/postgres:<major> (and :latest) from the PostgreSQL this
# machine has installed (Debian's postgresql package), since no base image
# can be pulled here.
#
#   deploy/postgres/image.sh          build it
#   deploy/postgres/image.sh --check  also start it on a new volume, wait
#                                     for its health check, and connect
#
# The image is FROM scratch and holds exactly what PostgreSQL needs at the
# same paths as on the host: its programs (postgres, initdb, pg_isready),
# its share and library directories, the shared libraries they load (found
# with ldd, the dynamic loader included), the time zone database, dash as
# /bin/sh for the entry point, and /etc/passwd naming the user it runs as
# (999, not root: initdb refuses root). Why not `docker import` of a root
# file system made with debootstrap: that needs Debian's mirror and makes
# a 100 MB image with a package manager and a shell nobody uses; this one
# is what runs, about 60 MB, and is made in seconds from files already here.
#
# The data directory is /var/lib/postgresql/data, a volume; the socket is in
# /tmp. The health check is pg_isready over TCP.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

check=no
for arg in "$@"; do
  case "$arg" in
    --check) check=yes ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
for tool in docker ldd; do
  command -v "$tool" >/dev/null || { echo "postgres image: $tool is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || {
  echo "postgres image: cannot reach the Docker engine: $(docker info 2>&1 | tail -1)" >&2
  exit 1
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/root

# Debian's /bin, /lib and /lib64 are symlinks into /usr: the same in the
# image, made first, so that files are copied to their real directories.
mkdir -p "$root"
for link in /bin /lib /lib64; do
  [ -L "$link" ] && ln -s "$(readlink "$link")" "$root$link"
done

# copy PATH: the file PATH into the image at its real place, and, when
# PATH goes through a symlink of its own (libfoo.so.1 -> libfoo.so.1.2.3),
# that symlink too.
copy() {
  local dir real
  dir=$(cd "$(dirname "$1")" && pwd -P)
  mkdir -p "$root$dir"
  cp -a "$dir/$(basename "$1")" "$root$dir/"
  real=$(readlink -f "$1")
  if [ "$real" != "$dir/$(basename "$1")" ]; then
    mkdir -p "$root$(dirname "$real")"
    cp -a "$real" "$root$real"
  fi
}

programs=("$bindir/postgres" "$bindir/initdb" "$bindir/pg_isready" /usr/bin/dash)
for program in "${programs[@]}"; do copy "$program"; done
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

# Every shared library the programs and the modules load, and the dynamic
# loader they name.
modules=()
for module in "$libdir"/*.so; do
  case "$(basename "$module")" in llvmjit*) ;; *) modules+=("$module") ;; esac
done
libraries=$( { for file in "${programs[@]}" "${modules[@]}"; do ldd "$file" 2>/dev/null; done; } |
  awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u)
for library in $libraries; do copy "$library"; done

mkdir -p "$root/etc" "$root/tmp" "$root/var/lib/postgresql/data"
printf 'root:x:0:0:root:/:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
chown -R 999:999 "$root/var/lib/postgresql"
chmod 700 "$root/var/lib/postgresql/data"
cp "$repo/deploy/postgres/entrypoint.sh" "$root/entrypoint.sh"
chmod 755 "$root/entrypoint.sh"

version=$("$bindir/postgres" --version | awk '{ print $3 }')
tar -C "$root" -cf "$context/root.tar" .
cat >"$context/Dockerfile" <<DOCKERFILE
FROM scratch
ADD root.tar /
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
if ! docker build --quiet --tag "ecommerce/postgres:$major" --tag ecommerce/postgres:latest "$context" >"$context/build.log" 2>&1; then
  cat "$context/build.log" >&2
  echo "postgres image: docker build failed" >&2
  exit 1
fi
size=$(docker image inspect --format '{{.Size}}' "ecommerce/postgres:$major")
printf 'postgres image: ecommerce/postgres:%s and :latest (PostgreSQL %s), %.1f MB\n' "$major" "$version" "$(awk "BEGIN { print $size / 1000000 }")"

[ "$check" = yes ] || exit 0

# Started on a new volume with a password secret, healthy, running as 999;
# over TCP the password is required and works; restarted on the same
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
chmod 644 "$context/password"
start() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker run -d --name "$name" --read-only --tmpfs /tmp -p 127.0.0.1::5432 \
    -v "$name:/var/lib/postgresql/data" -v "$context/password:/run/secrets/password:ro" \
    -e POSTGRES_PASSWORD_FILE=/run/secrets/password "ecommerce/postgres:$major" >/dev/null
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
docker stop "$name" >/dev/null
start
port=$(docker port "$name" 5432/tcp | head -1 | sed 's/.*://')
kept=$(PGPASSWORD=$password "$psql" -h 127.0.0.1 -p "$port" -U postgres -Atc 'select n from kept')
[ "$kept" = 42 ] || { echo "postgres image: the data did not survive a restart (got '$kept')" >&2; exit 1; }
echo "postgres image: check passed (healthy on a new volume as uid 999, password required, data kept across a restart)"
