# Shared by .ci/quickstart, .ci/test and .ci/run: one way to make the venv and install Offcut.
# Sourced, not run. Works on a fresh Debian/Ubuntu with Python >= 3.10 (3.11 tested).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OFFCUT_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root for: $* (install it by hand, then re-run)"; fi
}

apt_install() {
  command -v apt-get >/dev/null || die "missing system packages ($*) and no apt-get to install them"
  say "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
  command -v "$PY" >/dev/null || apt_install python3
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Offcut needs Python >= 3.10"
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
      ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt_install "python${ver}-venv" || apt_install python3-venv
    fi
    say "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
}

install_offcut() {  # $1: extras, e.g. "test,compare"
  local extras="${1:-}"
  say "pip install -e .${extras:+[$extras]}"
  "$VENV/bin/python" -m pip install -q -e "$REPO${extras:+[$extras]}" 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/offcut" --version >/dev/null || die "offcut did not install"
}

# The wheel a user installs, built from this checkout and installed into a venv of its own, with
# no source tree on its path, so the tests run exactly what `pip install offcut` puts in place.
# The wheel is rebuilt on every call (cheap); the venv keeps its dependencies and only Offcut is
# reinstalled. Under .ci/test the tests find it through OFFCUT_E2E_OFFCUT.
WHEEL_VENV="${OFFCUT_WHEEL_VENV:-${VENV}-wheel}"
install_wheel() {  # $1: the venv (default $WHEEL_VENV)
  local venv="${1:-$WHEEL_VENV}" dist="$REPO/.whl" wheel
  say "pip wheel . and install it into $venv"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  # setuptools builds in ./build and would put files since deleted from the source in the wheel
  rm -rf "$dist" "$REPO/build"
  "$venv/bin/python" -m pip wheel -q --no-deps -w "$dist" "$REPO" >/dev/null \
    || die "pip wheel failed"
  wheel=$(ls "$dist"/offcut-*-py3-none-any.whl) || die "no wheel in $dist"
  "$venv/bin/python" -m pip install -q "$wheel" 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel" >/dev/null \
    || die "installing $wheel failed"
  rm -rf "$REPO/build"
  (cd / && env -u PYTHONPATH "$venv/bin/offcut" --version >/dev/null) || die "the wheel's offcut does not run"
}
