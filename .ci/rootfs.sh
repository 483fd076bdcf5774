#!/usr/bin/env bash
# Build (once) and cache a Debian rootfs holding real editors for the end-to-end tests.
# The cache lives outside the repository; a stamp file marks a finished build so an
# interrupted run is redone, never half-used.
#
#   .ci/rootfs.sh [trixie]   GIMP 3.0 and Krita 5.2 (PyQt5), Debian trixie
#   .ci/rootfs.sh sid        GIMP 3.2 from sid, Krita 6 (PyQt6) from experimental
#   OFFCUT_ROOTFS_DIR=DIR    choose the cache folder (default /var/cache/offcut); prints the rootfs path
set -euo pipefail
SUITE="${1:-trixie}"
CACHE="${OFFCUT_ROOTFS_DIR:-/var/cache/offcut}"
ROOT="$CACHE/rootfs-$SUITE"
STAMP="$ROOT/.offcut-rootfs-v1"
COMMON="python3-gi xvfb xauth python3-zmq python3-msgpack xdotool x11-apps imagemagick"
# sid's and experimental's Release files on the mirror can be past Valid-Until.
APT=(apt-get -o Acquire::Check-Valid-Until=false -y -qq --no-install-recommends)
# Added after rootfs were first cached: installed into a cached rootfs too (ensure_extras).
# krita-l10n: Krita's own translations, so the language tests (#17) show Krita in German and
# Japanese around Offcut's translated docker, as a user sees it.
EXTRAS="krita-l10n"
case "$SUITE" in
  trixie) INSTALL=("${APT[@]}" install gimp gir1.2-gimp-3.0 krita python3-pyqt5 $COMMON $EXTRAS)
          EXTRA_INSTALL=("${APT[@]}" install $EXTRAS) ;;
  sid)    INSTALL=("${APT[@]}" install -t experimental gimp gir1.2-gimp-3.0 krita python3-pyqt6 $COMMON $EXTRAS)
          EXTRA_INSTALL=("${APT[@]}" install -t experimental $EXTRAS) ;;
  *) echo "rootfs.sh: unknown suite '$SUITE' (trixie or sid)" >&2; exit 2 ;;
esac

# Idempotent: installs into a finished rootfs whatever of EXTRAS it lacks, in a private mount
# namespace (its /proc vanishes with it), and does nothing when all are there.
ensure_extras() {
  local missing=() pkg
  for pkg in $EXTRAS; do
    chroot "$ROOT" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$pkg")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then echo "rootfs.sh: needs root to add ${missing[*]}" >&2; exit 1; fi
  echo "rootfs.sh: adding ${missing[*]} to the cached $SUITE rootfs" >&2
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  unshare -m --propagation private sh -c '
    mount -t proc proc "$1/proc"
    shift
    chroot "$@"' sh "$ROOT" "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
      apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
  unshare -m --propagation private sh -c '
    mount -t proc proc "$1/proc"
    shift
    chroot "$@"' sh "$ROOT" "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
      "${EXTRA_INSTALL[@]}" >&2
  chroot "$ROOT" apt-get clean
}

if [ -f "$STAMP" ]; then ensure_extras; echo "$ROOT"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "rootfs.sh: needs root (debootstrap and chroot)" >&2; exit 1; fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

cleanup() { umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$ROOT"
mkdir -p "$CACHE"
echo "rootfs.sh: debootstrap $SUITE into $ROOT" >&2
debootstrap --variant=minbase "$SUITE" "$ROOT" http://deb.debian.org/debian >&2
if [ "$SUITE" = sid ]; then
  echo "deb http://deb.debian.org/debian experimental main" > "$ROOT/etc/apt/sources.list.d/experimental.list"
fi
mount -t proc proc "$ROOT/proc"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive "${INSTALL[@]}" >&2
chroot "$ROOT" apt-get clean
umount "$ROOT/proc"
touch "$STAMP"
echo "$ROOT"
