#!/usr/bin/env bash
# Builds the pageflow container image here, from nothing, and checks what is inside it.
#
# Where no container registry is reachable (see ../shared/LOCAL-AWS.md, "Containers"):
#   1. installs podman and mmdebstrap with apt-get when missing;
#   2. builds the release binary (`cargo build --release --locked -p pageflow`);
#   3. makes two Debian 12 bases with mmdebstrap (without docs, man pages, locales) and imports them
#      into podman, once (their image ids are kept in target/image/*.id; a base is made again only
#      when its image is gone): pageflow-build-base, minbase + ca-certificates and binutils, has
#      what the Dockerfile's `prebuilt` and `files` stages need (a shell, objcopy, the CA bundle); pageflow-runtime-base holds what distroless `cc` holds,
#      glibc and libgcc_s, unpacked, without a shell;
#   4. builds deploy/Dockerfile, target `runtime-prebuilt`, with these bases as BUILD_IMAGE and
#      RUNTIME_IMAGE and the binary of step 2 (`podman build --isolation=chroot`: the default OCI
#      runtime cannot start containers in these sandboxes, chroot isolation can);
#   5. checks the image's content without running a container (`podman run` fails here too):
#      `podman create` + `podman export` into target/image/rootfs-check, then in a chroot of it, as
#      the image's user: `pageflow --version`, and `pageflow generate` + `pageflow replay`, whose
#      features must equal byte for byte those of the same replay outside the image. It also checks
#      the image's configuration (non-root user, ports, stop signal, entry point) and the files it
#      adds, and prints the image's size.
#
# Running it again reuses the bases, cargo's build and podman's layer cache; it removes the image
# it replaces and the exported tree (KEEP_TREE=1 keeps the tree for a look inside).
# Needs root (apt-get, mmdebstrap, rootful podman, chroot). Exits non-zero, saying why, on any
# failure.
#
# Settings (environment): IMAGE (default localhost/pageflow); BUILD_BASE and RUNTIME_BASE to use
# images already in podman's storage instead of making them (BUILD_BASE needs a shell,
# binutils and ca-certificates, RUNTIME_BASE glibc and libgcc_s).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

IMAGE=${IMAGE:-localhost/pageflow}
SUITE=bookworm
CACHE=$ROOT/target/image
BINARY=target/release/pageflow
# The job's user and group in the image (deploy/Dockerfile, USER).
JOB_UID=10001
CHECK_CONTAINER=pageflow-image-check
TREE=$CACHE/rootfs-check

fail() {
  echo "image: $*" >&2
  exit 1
}
step() {
  echo "image: [${SECONDS}s] $*"
}

[ "$(id -u)" = 0 ] || fail "this needs root (apt-get, mmdebstrap, podman's storage, chroot): run it as root, e.g. sudo bash deploy/image/build.sh"

# --- installs -----------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian's ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || fail "${missing[*]} missing and there is no apt-get: install them with the system's package manager"
  apt-get update -qq || fail "apt-get update failed: check the network and /etc/apt/sources.list"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "apt-get could not install ${missing[*]}: run apt-get install ${missing[*]} to see why"
fi
command -v cargo >/dev/null 2>&1 || fail "cargo is not installed: install Rust from https://rustup.rs"
mkdir -p "$CACHE"

# --- the binary ---------------------------------------------------------------------------------
step "building the release binary (cargo build --release --locked -p pageflow)"
cargo build --release --locked -p pageflow
[ -x "$BINARY" ] || fail "cargo succeeded but $BINARY is missing"
VERSION=$("$BINARY" --version | awk '{print $2}')
[ -n "$VERSION" ] || fail "$BINARY --version printed no version"

# --- the local bases ----------------------------------------------------------------------------
# Documentation, man pages, locales and iconv modules are of no use to the binary in a container.
TRIM=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*')

# make_base NAME WHAT DURATION MMDEBSTRAP-ARGUMENTS...: makes localhost/NAME:$SUITE with mmdebstrap and
# imports it, unless the image recorded in target/image/NAME-$SUITE.id is still there. Prints the
# image's name.
make_base() {
  local name=localhost/$1:$SUITE what=$2 duration=$3 id_file=$CACHE/$1-$SUITE.id rootfs=$CACHE/$1-$SUITE.tar
  shift 3
  if [ -s "$id_file" ] && podman image exists "$name" &&
    [ "$(podman image inspect --format '{{.Id}}' "$name")" = "$(cat "$id_file")" ]; then
    step "reusing $name, $what (made $(date -r "$id_file" '+%Y-%m-%d %H:%M'); rm $id_file to make it again)" >&2
  else
    step "making $name with mmdebstrap: $what (about $duration)" >&2
    rm -f "$rootfs" "$id_file"
    mmdebstrap --quiet "$@" "${TRIM[@]}" "$SUITE" "$rootfs" >&2 ||
      fail "mmdebstrap could not make $name: it downloads Debian's packages, check that deb.debian.org is reachable"
    podman import --quiet "$rootfs" "$name" >/dev/null ||
      fail "podman import of $rootfs failed: check podman info and the free disk space"
    rm -f "$rootfs"
    podman image inspect --format '{{.Id}}' "$name" >"$id_file"
  fi
  echo "$name"
}

# BUILD_IMAGE runs the Dockerfile's `prebuilt` and `files` stages: a shell, objcopy, the CA bundle.
if [ -n "${BUILD_BASE:-}" ]; then
  podman image exists "$BUILD_BASE" || fail "BUILD_BASE=$BUILD_BASE is not in podman's storage (podman images): import it first, or unset BUILD_BASE"
else
  BUILD_BASE=$(make_base pageflow-build-base "Debian $SUITE minbase + ca-certificates, binutils" "30 to 90 s" \
    --variant=minbase --include=ca-certificates,binutils)
fi
# RUNTIME_IMAGE: what distroless `cc` holds, glibc and libgcc_s, unpacked (no shell, no package
# manager); the CA bundle comes from the `files` stage.
if [ -n "${RUNTIME_BASE:-}" ]; then
  podman image exists "$RUNTIME_BASE" || fail "RUNTIME_BASE=$RUNTIME_BASE is not in podman's storage (podman images): import it first, or unset RUNTIME_BASE"
else
  RUNTIME_BASE=$(make_base pageflow-runtime-base "Debian $SUITE libc6 + libgcc-s1, unpacked" "10 s" \
    --variant=extract --include=libc6,libgcc-s1)
fi

# --- the image ----------------------------------------------------------------------------------
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE:latest" 2>/dev/null || true)
step "building $IMAGE:$VERSION (deploy/Dockerfile, target runtime-prebuilt, on $RUNTIME_BASE)"
podman build --quiet --isolation=chroot --pull=never --layers=false \
  --file deploy/Dockerfile --target runtime-prebuilt \
  --build-arg BUILD_IMAGE="$BUILD_BASE" --build-arg RUNTIME_IMAGE="$RUNTIME_BASE" \
  --build-arg PREBUILT="$BINARY" \
  --tag "$IMAGE:$VERSION" --tag "$IMAGE:latest" . >/dev/null ||
  fail "podman build failed (its output is above): fix deploy/Dockerfile or the build context (.dockerignore)"
current=$(podman image inspect --format '{{.Id}}' "$IMAGE:latest")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  # The image this build replaces, unless another tag still names it.
  podman rmi "$previous" >/dev/null 2>&1 || true
fi

# --- the image's configuration ------------------------------------------------------------------
config() {
  podman image inspect --format "$1" "$IMAGE:latest"
}
step "checking the configuration of $IMAGE:latest"
user=$(config '{{.Config.User}}')
case "$user" in
  "" | 0 | 0:* | root | root:*) fail "the image runs as root (Config.User = '$user'): deploy/Dockerfile must say USER $JOB_UID:$JOB_UID" ;;
esac
[ "${user%%:*}" = "$JOB_UID" ] || fail "Config.User is '$user', not $JOB_UID: the data directory is owned by $JOB_UID, keep them the same in deploy/Dockerfile"
[ "$(config '{{.Config.StopSignal}}')" = SIGTERM ] || fail "STOPSIGNAL is '$(config '{{.Config.StopSignal}}')', not SIGTERM: the job's graceful stop (final checkpoint) answers SIGTERM"
[ "$(config '{{json .Config.Entrypoint}}')" = '["/usr/local/bin/pageflow"]' ] || fail "ENTRYPOINT is $(config '{{json .Config.Entrypoint}}'), not [\"/usr/local/bin/pageflow\"]"
[ "$(config '{{json .Config.Cmd}}')" = '["run"]' ] || fail "CMD is $(config '{{json .Config.Cmd}}'), not [\"run\"]"
# shellcheck disable=SC2016 # a Go template, not a shell expansion
ports=$(config '{{range $port, $_ := .Config.ExposedPorts}}{{$port}} {{end}}')
for port in 8080/tcp 7100/tcp; do
  [[ " $ports" == *" $port "* ]] || fail "port $port is not exposed (EXPOSE: $ports): HTTP is 8080, the cluster 7100"
done
workdir=$(config '{{.Config.WorkingDir}}')
echo "image: user $user, workdir $workdir, ports ${ports% }, stop signal SIGTERM, entrypoint /usr/local/bin/pageflow run"

# --- the image's content ------------------------------------------------------------------------
cleanup() {
  podman rm --force "$CHECK_CONTAINER" >/dev/null 2>&1 || true
  if [ "${KEEP_TREE:-0}" != 1 ]; then
    rm -rf "$TREE"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
podman rm --force "$CHECK_CONTAINER" >/dev/null 2>&1 || true
rm -rf "$TREE"
mkdir -p "$TREE"
step "exporting a container of $IMAGE:latest into $TREE"
podman create --name "$CHECK_CONTAINER" "$IMAGE:latest" >/dev/null || fail "podman create $IMAGE:latest failed"
podman export "$CHECK_CONTAINER" | tar -x -C "$TREE" || fail "podman export of $CHECK_CONTAINER into $TREE failed: check the free disk space"

echo "image: top level: $(find "$TREE" -mindepth 1 -maxdepth 1 -printf '%f ' | tr ' ' '\n' | sort | tr '\n' ' ')"
if [ -e "$TREE/bin/sh" ] || [ -L "$TREE/bin/sh" ]; then
  echo "image: the runtime base has a shell (/bin/sh); the binary does not need one"
else
  echo "image: no shell, no package manager: the binary, its libraries and the CA bundle"
fi
# What the Dockerfile adds to the base, and nothing else is needed at run time.
bin=$TREE/usr/local/bin/pageflow
[ -x "$bin" ] || fail "/usr/local/bin/pageflow is missing from the image: check PREBUILT and .dockerignore (!$BINARY)"
build_id() { readelf -n "$1" | awk '/Build ID/ {print $3}'; }
[ "$(build_id "$bin")" = "$(build_id "$BINARY")" ] ||
  fail "/usr/local/bin/pageflow in the image is another build than $BINARY (GNU build ids differ): podman build used a stale layer or a different PREBUILT"
if readelf -S -W "$bin" | grep -Eq '\.debug_(info|line) '; then
  fail "/usr/local/bin/pageflow in the image still has its debug info: the Dockerfile's objcopy --strip-debug did not run"
fi
[ "$(stat -c %u "$bin")" = 0 ] || fail "/usr/local/bin/pageflow is owned by uid $(stat -c %u "$bin"), not root: the job's user must not be able to replace it"
[ -s "$TREE/etc/ssl/certs/ca-certificates.crt" ] || fail "/etc/ssl/certs/ca-certificates.crt is missing or empty: the AWS clients cannot verify TLS without it"
data=$TREE${workdir}
if [ ! -d "$data" ] || [ "$(stat -c %u "$data")" != "$JOB_UID" ]; then
  fail "the working directory $workdir is missing or not owned by $JOB_UID: local mode could not write pageflow-data there"
fi
# Every shared library the binary loads is in the image (the chroot below proves they load).
while read -r lib; do
  found=$(find "$TREE/lib" "$TREE/lib64" "$TREE/usr/lib" -name "$lib" -print -quit 2>/dev/null || true)
  [ -n "$found" ] || fail "the binary needs $lib, which the image lacks: use a RUNTIME_IMAGE with glibc and libgcc_s (distroless cc, debian-slim)"
done < <(ldd "$BINARY" | awk '$1 ~ /\.so/ && $1 !~ /^linux-vdso/ {n=$1; sub(".*/", "", n); print n}')
echo "image: the binary loads $(ldd "$BINARY" | awk '$1 !~ /^linux-vdso/ {n=$1; sub(".*/", "", n); printf "%s ", n}')(all in the image)"

# As the image's user, with the image's environment (not the host's).
CHROOT=$(command -v chroot) || fail "chroot is missing (Debian's coreutils has it)"
in_image() {
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$workdir" PAGEFLOW__SERVE__LISTEN=0.0.0.0:8080 \
    "$CHROOT" --userspec="$JOB_UID:$JOB_UID" "$TREE" "$@"
}
step "running pageflow in a chroot of the image as $JOB_UID:$JOB_UID"
printed=$(in_image /usr/local/bin/pageflow --version) || fail "pageflow --version failed inside the image: a library or the loader is missing (ldd $BINARY)"
[ "$printed" = "pageflow $VERSION" ] || fail "pageflow --version printed '$printed' inside the image, not 'pageflow $VERSION'"
echo "image: $printed"
in_image /usr/local/bin/pageflow generate --events 5000 --seed 7 --invalid-share 0.01 --out "$workdir/check-pageviews.jsonl" >/dev/null ||
  fail "pageflow generate failed inside the image as $JOB_UID: is $workdir writable by the job's user?"
in_image /usr/local/bin/pageflow replay --input "$workdir/check-pageviews.jsonl" --out "$workdir/check" >/dev/null ||
  fail "pageflow replay failed inside the image as $JOB_UID"
features=$data/check/features.jsonl
[ -s "$features" ] || fail "pageflow replay inside the image wrote no features ($features is missing or empty)"
[ "$(stat -c %u "$features")" = "$JOB_UID" ] || fail "the features were written by uid $(stat -c %u "$features"), not $JOB_UID"
# The same replay outside the image gives the same bytes.
outside=$CACHE/replay-outside
rm -rf "$outside"
"$BINARY" replay --input "$data/check-pageviews.jsonl" --out "$outside" >/dev/null || fail "pageflow replay failed outside the image"
cmp -s "$features" "$outside/features.jsonl" || fail "the replay inside the image wrote other features than the same replay outside: compare $features and $outside/features.jsonl (KEEP_TREE=1)"
rm -rf "$outside"
echo "image: generate + replay inside the image: $(wc -l <"$features") features, byte-identical to the replay outside"

# --- size ---------------------------------------------------------------------------------------
size=$(config '{{.Size}}')
base_size=$(podman image inspect --format '{{.Size}}' "$RUNTIME_BASE")
rm -rf "$data/check" "$data/check-pageviews.jsonl"
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1000000}'; }
step "done: $IMAGE:$VERSION is $(mb "$size") (base $RUNTIME_BASE $(mb "$base_size"), added $(mb $((size - base_size))): the binary $(mb "$(stat -c %s "$bin")") without debug info and the CA bundle); exported tree $(du -sh "$TREE" | cut -f1)"
