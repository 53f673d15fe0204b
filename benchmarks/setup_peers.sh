#!/usr/bin/env bash
# Install the peer tools the benchmark compares against, outside the project's venv:
#   benchmarks/.peers     PyHessian, nngeometry, hessian-eigenthings (pip --target, --no-deps)
#   benchmarks/.venv-nt   neural-tangents 0.6.5 on jax/jaxlib 0.4.23 (its own venv)
# Usage: bash benchmarks/setup_peers.sh [python-with-torch]   (default: python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${1:-python3}"
"$py" -m pip install -q --no-deps --target "$here/.peers" -r "$here/requirements-peers.txt"
if [ ! -x "$here/.venv-nt/bin/python" ]; then
  python3 -m venv "$here/.venv-nt"
fi
"$here/.venv-nt/bin/pip" install -q -r "$here/requirements-nt.txt"
"$here/.venv-nt/bin/pip" install -q --no-deps "neural-tangents==0.6.5"
echo "peers installed under $here/.peers and $here/.venv-nt"
