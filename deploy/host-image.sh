# shellcheck shell=bash
# Sourced by the scripts that build an image FROM scratch out of programs
# this machine has installed from Debian's packages (deploy/postgres,
# deploy/haproxy), since no base image can be pulled here. Each copies
# what its program needs into $root at the same paths as on the host, then
# calls image_build with the rest of its Dockerfile.
#
#   image_start NAME                 a new root in a temporary directory
#   image_copy FILE...               files at their real place (symlinks too)
#   image_copy_libraries FILE...     every shared library FILE loads, and
#                                    the dynamic loader
#   image_user NAME UID              /etc/passwd and /etc/group naming it
#   image_build TAG... <DOCKERFILE   FROM scratch, the root added first
#
# Why not `docker import` of a root file system made with debootstrap: that
# needs Debian's mirror and makes an image with a package manager and a
# shell nobody uses; these hold what runs, and are made in seconds.

image_start() {
  image_name=$1
  for tool in docker ldd; do
    command -v "$tool" >/dev/null || { echo "$image_name image: $tool is not installed" >&2; exit 1; }
  done
  docker info >/dev/null 2>&1 || {
    echo "$image_name image: cannot reach the Docker engine: $(docker info 2>&1 | tail -1)" >&2
    exit 1
  }
  context=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$context'" EXIT
  root=$context/root
  # Debian's /bin, /lib and /lib64 are symlinks into /usr: the same in the
  # image, made first, so that files are copied to their real directories.
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  local link
  for link in /bin /lib /lib64; do
    [ -L "$link" ] && ln -s "$(readlink "$link")" "$root$link"
  done
  return 0
}

# image_copy FILE...: each FILE into the image at its real place, and, when
# it goes through a symlink of its own (libfoo.so.1 -> libfoo.so.1.2.3),
# that symlink too.
image_copy() {
  local file dir real
  for file in "$@"; do
    dir=$(cd "$(dirname "$file")" && pwd -P)
    mkdir -p "$root$dir"
    cp -a "$dir/$(basename "$file")" "$root$dir/"
    real=$(readlink -f "$file")
    if [ "$real" != "$dir/$(basename "$file")" ]; then
      mkdir -p "$root$(dirname "$real")"
      cp -a "$real" "$root$real"
    fi
  done
}

image_copy_libraries() {
  local libraries
  libraries=$( { for file in "$@"; do ldd "$file" 2>/dev/null || true; done; } |
    awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u)
  # shellcheck disable=SC2086
  [ -z "$libraries" ] || image_copy $libraries
}

image_user() {
  printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:%s:%s:%s:/:/sbin/nologin\n' "$1" "$2" "$2" "$1" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$1" "$2" >"$root/etc/group"
}

# image_build TAG...: the Dockerfile's lines after `FROM scratch` and
# `ADD root.tar /` come on stdin.
image_build() {
  local tags=() tag
  for tag in "$@"; do tags+=(--tag "$tag"); done
  tar -C "$root" -cf "$context/root.tar" .
  { printf 'FROM scratch\nADD root.tar /\n'; cat; } >"$context/Dockerfile"
  if ! docker build --quiet "${tags[@]}" "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    echo "$image_name image: docker build failed" >&2
    exit 1
  fi
  local size
  size=$(docker image inspect --format '{{.Size}}' "$1")
  printf '%s image: %s, %.1f MB\n' "$image_name" "$*" "$(awk "BEGIN { print $size / 1000000 }")"
}
