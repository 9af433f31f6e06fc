# Shared by scripts/kube/cluster and scripts/kube/images (sourced, not run): where the test
# cluster keeps its binaries, state and logs. Everything is root's and on this machine only.
KUBE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=1.20.2
CACHE=${MINIHUB_KUBE_CACHE:-/var/cache/minihub-kube}
STATE=${MINIHUB_KUBE_STATE:-/var/lib/minihub-kube}
LOGS=${MINIHUB_KUBE_LOGS:-/var/log/minihub-kube}
RUN=/run/minihub-kube
# The build's identity: the version, our patches, the reflect2 that replaces the vendored one
# and the build script's own recipe. Change any of them and the cache key changes.
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
BUILD_RECIPE_VERSION=1
kube_key() {
  { echo "$KUBE_VERSION $BUILD_RECIPE_VERSION reflect2-1.0.2"; cat "$KUBE_DIR"/patches/*.patch; } |
    sha256sum | cut -c1-12
}
BIN="$CACHE/$KUBE_VERSION-$(kube_key)/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause)

# Debian's docker.io, on its own socket, data root and exec root: never the machine's default
# daemon (if one exists) and never a bridge. /usr/bin/docker, not whatever client is first on
# PATH: the images and the kubelet talk to this daemon only.
DOCKER_SOCK=$RUN/docker.sock
DOCKER_HOST="unix://$DOCKER_SOCK"
export DOCKER_HOST
docker() { /usr/bin/docker "$@"; }

PAUSE_IMAGE=minihub-kube/pause:3.2
USER_IMAGE=minihub-kube/user:test

die() {
  echo "scripts/kube: $*" >&2
  exit 1
}

# Bounded wait: wait_for SECONDS DESCRIPTION COMMAND... (the command is retried every 0.2 s).
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
  [ -n "$what" ] && echo "  $what"
  return 0
}
