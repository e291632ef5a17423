#!/usr/bin/env bash
# Makes the development TLS material in keys/ (or --dir DIR):
#   ca.pem, ca.key          a development CA, the only root either service trusts
#   cert.pem, private.key   discount's server identity, signed by the CA,
#                           valid for DNS:localhost, IP:127.0.0.1 and IP:::1
#                           (and each --dns NAME), workload identity
#                           spiffe://TRUST_DOMAIN/discount
#   client.pem, client.key  catalog's client identity, signed by the CA,
#                           workload identity spiffe://TRUST_DOMAIN/catalog
# All keys are ECDSA P-256. Existing files are never overwritten unless
# --force is given; --renew keeps the CA and replaces the four others,
# which running services pick up with no failed request. These are for
# development only: see keys/README.md.
set -euo pipefail

usage() {
  cat <<USAGE
usage: scripts/gen-keys.sh [--dir DIR] [--force | --renew] [--in-place] [--days N]
                           [--trust-domain TD] [--dns NAME]... [--owner UID:GID]
  --dir DIR            where to write the files (default: keys/ in the repository)
  --force              replace existing files, the CA too: services already
                       running trust only the old CA, so until both have
                       reloaded, their calls fail (see --renew)
  --renew              keep ca.pem and ca.key, and replace the server and
                       client certificates and keys with new ones from that
                       CA: what a renewal is; running services reload them
                       within seconds and no call fails
  --in-place           rewrite existing files in place (same inode, owner and
                       mode) instead of renaming new ones over them: what a
                       file bind-mounted into a container (Compose secrets)
                       needs to show the change; renaming is the default, so
                       that nothing ever reads half a file
  --dns NAME           another name discount's certificate is valid for, such
                       as discount (Compose) or discount.ecommerce.svc
                       (Kubernetes); repeat for several
  --owner UID:GID      give the files but ca.key to this user (root only), so a
                       container running as that user can read its private
                       key, which stays readable by its owner alone (mode 600)
  --days N             validity of the server and client certificates (default 365)
  --trust-domain TD    the SPIFFE trust domain of the workload identities
                       (default ecommerce.local: the services' defaults;
                       with another, set discount's --allow-client and the
                       catalog's --discount-identity to match)
USAGE
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$repo/keys"
force=no
renew=no
in_place=no
days=365
trust_domain=ecommerce.local
dns_names=()
owner=
# value OPTION EXAMPLE "$@": the option's value, or a message and exit 2.
value() {
  if [ $# -lt 4 ] || [ -z "$4" ]; then
    echo "gen-keys: $1 needs a value, such as $2" >&2
    exit 2
  fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) value "$1" DIR "$@"; dir=$2; shift 2 ;;
    --force) force=yes; shift ;;
    --renew) renew=yes; shift ;;
    --in-place) in_place=yes; shift ;;
    --days) value "$1" 365 "$@"; days=$2; shift 2 ;;
    --trust-domain) value "$1" ecommerce.local "$@"; trust_domain=$2; shift 2 ;;
    --dns) value "$1" discount "$@"; dns_names+=("$2"); shift 2 ;;
    --owner) value "$1" 65532:65532 "$@"; owner=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gen-keys: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# SPIFFE: a trust domain is lower-case letters, digits, dots, dashes and
# underscores.
if ! [[ "$trust_domain" =~ ^[a-z0-9._-]+$ ]]; then
  echo "gen-keys: --trust-domain $trust_domain: use lower-case letters, digits, '.', '-' and '_' only, such as ecommerce.local" >&2
  exit 2
fi

# A DNS name in a certificate: letters, digits, '-' and '.', optionally a
# leading '*.' wildcard label.
server_san="DNS:localhost,IP:127.0.0.1,IP:::1"
if ! [[ "$days" =~ ^[1-9][0-9]{0,4}$ ]]; then
  echo "gen-keys: --days $days: write a whole number of days from 1 to 99999, such as 365" >&2
  exit 2
fi
for name in "${dns_names[@]}"; do
  # Labels of letters, digits and '-', joined by single dots; not an IP
  # address, which would need an IP entry to match.
  if ! [[ "$name" =~ ^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$ ]] \
    || [[ "$name" =~ ^[0-9.]+$ ]]; then
    echo "gen-keys: --dns $name: a host name is labels of letters, digits and '-' joined by dots, such as discount or discount.ecommerce.svc (not an IP address)" >&2
    exit 2
  fi
  server_san="$server_san,DNS:$name"
done
if [ -n "$owner" ] && { ! [[ "$owner" =~ ^[0-9]{1,10}:[0-9]{1,10}$ ]] \
  || [ "${owner%%:*}" -gt 4294967294 ] || [ "${owner##*:}" -gt 4294967294 ]; }; then
  echo "gen-keys: --owner $owner: write numeric UID:GID, each below 4294967295, such as 65532:65532" >&2
  exit 2
fi
if [ -n "$owner" ] && [ "$(id -u)" != 0 ]; then
  echo "gen-keys: --owner needs root (chown); without it, run the containers as your own user instead (see docs/deploy.md, Compose)" >&2
  exit 2
fi

command -v openssl >/dev/null || {
  echo "gen-keys: openssl is not installed (Debian/Ubuntu: apt-get install openssl)" >&2
  exit 1
}

files=(ca.pem ca.key cert.pem private.key client.pem client.key)
if [ "$renew" = yes ]; then
  if [ "$force" = yes ]; then
    echo "gen-keys: --renew keeps the CA and --force replaces it: give one of them" >&2
    exit 2
  fi
  for f in ca.pem ca.key; do
    [ -r "$dir/$f" ] || {
      echo "gen-keys: --renew needs the CA that signs the new certificates, and $dir/$f is missing; make a set first (without --renew)" >&2
      exit 1
    }
  done
  files=(cert.pem private.key client.pem client.key)
elif [ "$force" = no ]; then
  existing=()
  for f in "${files[@]}"; do [ -e "$dir/$f" ] && existing+=("$dir/$f"); done
  if [ ${#existing[@]} -gt 0 ]; then
    echo "gen-keys: refusing to overwrite ${existing[*]}" >&2
    echo "gen-keys: keep them, or run again with --force to make new ones" >&2
    exit 1
  fi
fi

# Everything is made in a scratch directory and moved into place at the end,
# so a failure halfway never leaves a mismatched set behind.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1" 2>/dev/null; }
serial() { echo "0x$(openssl rand -hex 16)"; }

# The CA. openssl req -x509 marks its certificate CA:TRUE; that is right here
# and is exactly why the seed's single self-signed certificate cannot serve
# as a server identity under rustls (CaUsedAsEndEntity).
if [ "$renew" = yes ]; then
  cp "$dir/ca.pem" "$dir/ca.key" "$work/"
else
  new_key ca.key
  # Each CA gets a subject of its own: a certificate from another dev CA
  # with the same name would be checked against this CA's key and reported
  # as BadSignature, where UnknownIssuer says what is wrong.
  ca_id=$(openssl rand -hex 4)
  openssl req -x509 -new -key "$work/ca.key" -sha256 -days 3650 -set_serial "$(serial)" \
    -subj "/O=ecommerce development/CN=ecommerce dev CA $ca_id" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca.pem"
fi

# sign NAME SUBJECT EXTENSIONS: a leaf certificate signed by the CA.
sign() {
  local name=$1 subject=$2 extensions=$3
  new_key "$name.key"
  openssl req -new -key "$work/$name.key" -subj "$subject" -out "$work/$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" \
    "$extensions" >"$work/$name.ext"
  openssl x509 -req -in "$work/$name.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -set_serial "$(serial)" -days "$days" -sha256 -extfile "$work/$name.ext" \
    -out "$work/$name.pem" 2>/dev/null
}

# Host names are matched against subjectAltName only (RFC 6125; rustls, and
# Go since 1.15, never look at the CN), so the SAN must list every name and
# address clients dial. The URI entry is the workload identity (SPIFFE):
# discount lets in callers by it, the catalog checks discount's.
sign server "/O=ecommerce development/CN=localhost" \
  "extendedKeyUsage=serverAuth
subjectAltName=$server_san,URI:spiffe://$trust_domain/discount"
sign client "/O=ecommerce development/CN=catalog" \
  "extendedKeyUsage=clientAuth
subjectAltName=DNS:catalog,URI:spiffe://$trust_domain/catalog"

openssl verify -CAfile "$work/ca.pem" "$work/server.pem" "$work/client.pem" >/dev/null

mkdir -p "$dir"
# Each pair renamed into place one right after the other: a service that
# watches its files sees both change at once (it waits for them to settle).
chmod 644 "$work/ca.pem" "$work/server.pem" "$work/client.pem"
if [ -n "$owner" ]; then
  # Not ca.key: no container needs the CA's key.
  (cd "$work" && chown "$owner" ca.pem server.pem server.key client.pem client.key)
fi
# place NEW TARGET: renamed over TARGET, or with --in-place written into
# it (a bind mount shows the file's inode, which a rename replaces).
place() {
  if [ "$in_place" = yes ] && [ -f "$2" ]; then
    cat "$1" >"$2"
    rm -f "$1"
  else
    mv "$1" "$2"
  fi
}
if [ "$renew" = no ]; then
  place "$work/ca.pem" "$dir/ca.pem"
  place "$work/ca.key" "$dir/ca.key"
fi
place "$work/server.pem" "$dir/cert.pem"
place "$work/server.key" "$dir/private.key"
place "$work/client.pem" "$dir/client.pem"
place "$work/client.key" "$dir/client.key"

echo "gen-keys: wrote ${files[*]} to $dir"
echo "gen-keys: server certificate valid for $(echo "$server_san" | sed 's/DNS://g; s/IP://g; s/,/, /g') for $days days"
echo "gen-keys: identities spiffe://$trust_domain/discount (cert.pem) and spiffe://$trust_domain/catalog (client.pem)"
if [ "$trust_domain" != ecommerce.local ]; then
  echo "gen-keys: the services expect ecommerce.local by default; run discount with --allow-client spiffe://$trust_domain/catalog"
  echo "gen-keys: and the catalog with --discount-identity spiffe://$trust_domain/discount"
fi
