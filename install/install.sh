#!/bin/sh
# Chat Diffusion installer for Linux and macOS: finds a Python >= 3.10 and runs
# install/install.py with the same arguments (see docs/install.md).
set -e
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
for py in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python; do
    if command -v "$py" >/dev/null 2>&1 &&
        "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        exec "$py" "$here/install.py" "$@"
    fi
done
echo "Chat Diffusion needs Python 3.10 or newer, and none was found." >&2
echo "  Debian/Ubuntu: sudo apt install python3 python3-venv" >&2
echo "  macOS: install Python from https://www.python.org/downloads/ (or: brew install python)" >&2
exit 1
