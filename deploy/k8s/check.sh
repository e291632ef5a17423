#!/usr/bin/env bash
# Renders deploy/k8s and deploy/k8s/cert-manager with kubectl kustomize and
# validates them offline (deploy/k8s/check.py), in a virtual environment
# with the pinned kubernetes-validate (target/k8s-venv, or K8S_VENV).
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
  exit 0
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

command -v kubectl >/dev/null || {
  echo "k8s: kubectl is not installed; it renders the manifests (kubectl kustomize), no cluster needed" >&2
  exit 1
}
venv=${K8S_VENV:-$repo/target/k8s-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "k8s: installing kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
PATH="$venv/bin:$PATH" "$venv/bin/python" "$here/check.py"
