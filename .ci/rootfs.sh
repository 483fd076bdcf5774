#!/usr/bin/env bash
# Build (once) and cache a Debian trixie rootfs holding real GIMP 3 and Krita 5 for the
# end-to-end tests. The cache lives outside the repository; a stamp file marks a finished build
# so an interrupted run is redone, never half-used.
#
#   .ci/rootfs.sh            build if missing, print the rootfs path
#   OFFCUT_ROOTFS=DIR        choose the cache location (default /var/cache/offcut/rootfs-trixie)
set -euo pipefail
ROOT="${OFFCUT_ROOTFS:-/var/cache/offcut/rootfs-trixie}"
STAMP="$ROOT/.offcut-rootfs-v1"
PKGS="gimp python3-gi gir1.2-gimp-3.0 krita python3-pyqt5 xvfb xauth python3-zmq python3-msgpack xdotool x11-apps imagemagick"

if [ -f "$STAMP" ]; then echo "$ROOT"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "rootfs.sh: needs root (debootstrap and chroot)" >&2; exit 1; fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }

cleanup() { umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
echo "rootfs.sh: debootstrap trixie into $ROOT" >&2
debootstrap --variant=minbase trixie "$ROOT" http://deb.debian.org/debian >&2
mount -t proc proc "$ROOT/proc"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends $PKGS >&2
chroot "$ROOT" apt-get clean
umount "$ROOT/proc"
touch "$STAMP"
echo "$ROOT"
