# shellcheck shell=bash
# Sourced by deploy/up.sh (Compose) and deploy/swarm/up.sh (Swarm): what
# both do before starting a stack. Checks that the services' images are
# built (and builds PostgreSQL's, HAProxy's and Prometheus' from this
# machine's packages when missing); makes, once, what the stacks hand their
# services as secrets, in ECOMMERCE_KEYS: the TLS material
# (scripts/gen-keys.sh, valid for the name discount) and the database's
# passwords and URL; and makes each readable by the user its container
# runs as. Needs `repo`, `deploy`, `ECOMMERCE_KEYS`, `database_volume`
# (the stack's PostgreSQL volume) and `down` (the command that removes the
# stack) set; sets `user` (the services' uid:gid).

for image in ecommerce/catalog ecommerce/discount; do
  docker image inspect "$image:${ECOMMERCE_VERSION:-latest}" >/dev/null 2>&1 || {
    echo "$(basename "$0"): no image $image:${ECOMMERCE_VERSION:-latest}; build it first: scripts/images.sh" >&2
    exit 1
  }
done
docker image inspect "ecommerce/postgres:${POSTGRES_VERSION:-15}" >/dev/null 2>&1 ||
  "$deploy/postgres/image.sh"
docker image inspect ecommerce/haproxy:latest >/dev/null 2>&1 || "$deploy/haproxy/image.sh"
docker image inspect ecommerce/prometheus:latest >/dev/null 2>&1 || "$deploy/prometheus/image.sh"

# The containers run as 65532 and read their keys, which are readable by
# their owner only. As root the keys are given to 65532; otherwise the
# containers run as the user running this script, who owns the keys.
if [ "$(id -u)" = 0 ]; then
  owner=(--owner 65532:65532)
else
  owner=()
  export ECOMMERCE_USER=${ECOMMERCE_USER:-$(id -u):$(id -g)}
fi
user=${ECOMMERCE_USER:-65532:65532}
if [ ! -e "$ECOMMERCE_KEYS/cert.pem" ]; then
  echo "$(basename "$0"): no keys in $ECOMMERCE_KEYS, making development keys valid for the name discount"
  "$repo/scripts/gen-keys.sh" --dir "$ECOMMERCE_KEYS" --dns discount "${owner[@]}"
elif ! openssl x509 -in "$ECOMMERCE_KEYS/cert.pem" -noout -ext subjectAltName 2>/dev/null | grep -Eq 'DNS:discount(,|$)'; then
  echo "$(basename "$0"): $ECOMMERCE_KEYS/cert.pem is not valid for the name discount, which the catalog dials;" >&2
  echo "$(basename "$0"): make new keys: scripts/gen-keys.sh --dir $ECOMMERCE_KEYS --force --dns discount ${owner[*]}" >&2
  exit 1
elif [ "$(id -u)" = 0 ]; then
  (cd "$ECOMMERCE_KEYS" && chown 65532:65532 ca.pem cert.pem private.key client.pem client.key)
fi

# The database's passwords (made once, like the keys): the superuser's,
# and the catalogs' role's, which their database URL holds. PostgreSQL
# runs as 999 and reads the two passwords; the catalogs read the URL.
secret() {
  local file=$ECOMMERCE_KEYS/$1 owner=$2
  if [ "$(id -u)" = 0 ]; then
    chown "$owner" "$file" && chmod 600 "$file"
  else
    # Readable by the containers' users, who are not this one; the
    # directory (700, below) keeps the host's other users out.
    chmod 644 "$file"
  fi
}
if [ ! -s "$ECOMMERCE_KEYS/postgres_password" ] || [ ! -s "$ECOMMERCE_KEYS/catalog_password" ]; then
  # A database volume made before knows other passwords: the catalogs
  # would fail to log in, deep in a container's log.
  if docker volume inspect "$database_volume" >/dev/null 2>&1; then
    echo "$(basename "$0"): $ECOMMERCE_KEYS lacks a database password, but the database volume $database_volume exists, made with passwords from another keys directory;" >&2
    echo "$(basename "$0"): give that directory back (ECOMMERCE_KEYS=...), or remove the volume and its data first: $down" >&2
    exit 1
  fi
fi
# Only what is missing is made: a password made again would no longer be
# the one the database was made with.
for password in postgres_password catalog_password; do
  [ -s "$ECOMMERCE_KEYS/$password" ] || (umask 077 && openssl rand -hex 24 >"$ECOMMERCE_KEYS/$password")
done
if [ ! -s "$ECOMMERCE_KEYS/database_url" ]; then
  (umask 077
   printf 'postgres://catalog:%s@postgres:5432/catalog\n' "$(cat "$ECOMMERCE_KEYS/catalog_password")" \
     >"$ECOMMERCE_KEYS/database_url")
fi
secret postgres_password 999:999
secret catalog_password 999:999
secret database_url "$user"
# The keys and passwords are for the containers (bind mounts, which the
# directory's mode does not restrict) and this user alone.
chmod 700 "$ECOMMERCE_KEYS"
