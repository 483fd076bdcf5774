#!/usr/bin/env bash
# Build (once) and cache a Debian rootfs holding real editors for the end-to-end tests.
# The cache lives outside the repository; a stamp file marks a finished build so an
# interrupted run is redone, never half-used.
#
#   .ci/rootfs.sh [trixie]   GIMP 3.0 and Krita 5.2 (PyQt5), Debian trixie
#   .ci/rootfs.sh sid        GIMP 3.2 from sid, Krita 6 (PyQt6) from experimental
#   OFFCUT_ROOTFS_DIR=DIR    choose the cache folder (default /var/cache/offcut); prints the rootfs path
#
# Every run also makes sure the UTF-8 locales of Offcut's languages exist (ensure_locales), so a
# rootfs cached before they were added gets them too: glibc ignores LANGUAGE under the C and
# C.UTF-8 locales, so GIMP's own texts (dialog buttons, menus) follow LANGUAGE=de only under a
# real locale such as de_DE.UTF-8.
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
# The languages Offcut ships (offcut.i18n.LANGUAGES), as locales (ensure_locales).
LOCALES="de_DE fr_FR es_ES pt_BR it_IT ru_RU ja_JP zh_CN ko_KR"

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "rootfs.sh: needs root ($1)" >&2; exit 1; fi
}

# Run a command in the rootfs with its own /proc, in a private mount namespace (the /proc
# mount vanishes with it, even if the command fails).
in_root() {
  unshare -m --propagation private sh -c '
    mount -t proc proc "$1/proc"
    shift
    chroot "$@"' sh "$ROOT" "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive "$@"
}

# Idempotent: installs into a finished rootfs whatever of EXTRAS it lacks, and does nothing
# when all are there.
ensure_extras() {
  local missing=() pkg
  for pkg in $EXTRAS; do
    chroot "$ROOT" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$pkg")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  need_root "to add ${missing[*]}"
  echo "rootfs.sh: adding ${missing[*]} to the cached $SUITE rootfs" >&2
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  in_root apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
  in_root "${EXTRA_INSTALL[@]}" >&2
  chroot "$ROOT" apt-get clean
}

# Idempotent: generates whatever of LOCALES is missing, and does nothing when all are there.
# The locales package comes from the suite itself (never -t experimental), so it matches the
# installed C library; the cached package lists are fetched again only when they are gone.
ensure_locales() {
  local have missing="" l
  have="$(chroot "$ROOT" locale -a 2>/dev/null || true)"
  for l in $LOCALES; do
    printf '%s\n' "$have" | grep -qx "$l.utf8" || missing="$missing $l"
  done
  [ -z "$missing" ] && return 0
  need_root "to generate the locales$missing"
  echo "rootfs.sh: generating the locales$missing in $ROOT" >&2
  if ! chroot "$ROOT" dpkg-query -W -f='${Status}' locales 2>/dev/null | grep -qx 'install ok installed'; then
    in_root "${APT[@]}" install locales >&2 || {
      cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
      in_root apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
      in_root "${APT[@]}" install locales >&2
    }
    chroot "$ROOT" apt-get clean
  fi
  for l in $missing; do
    chroot "$ROOT" localedef -i "$l" -f UTF-8 "$l.UTF-8" >&2
  done
}

if [ -f "$STAMP" ]; then ensure_extras; ensure_locales; echo "$ROOT"; exit 0; fi
need_root "debootstrap and chroot"
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
ensure_locales
touch "$STAMP"
echo "$ROOT"
