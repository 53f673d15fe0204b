#!/usr/bin/env bash
# Install the peer tools the benchmark compares against, outside the repository and the project's
# venv, in the per-user peer folder ($NTK_EOS_PEERS_DIR, else ~/.cache/ntk-eos/peers):
#   torch/     PyHessian, nngeometry, hessian-eigenthings (pip --target, --no-deps; the benchmark
#              also installs these on first use)
#   venv-nt/   neural-tangents 0.6.5 on jax/jaxlib 0.4.23 (its own venv)
# Usage: bash benchmarks/setup_peers.sh [python-with-torch]   (default: python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${1:-python3}"
cd "$here/.."  # so that the benchmarks package imports
# benchmarks/common.py owns the folder's location and the torch peers' install.
"$py" -c 'import sys; from benchmarks.common import ensure_torch_peers; sys.exit(ensure_torch_peers() is not None)'
peers_dir="$("$py" -c 'from benchmarks.common import PEERS_DIR; print(PEERS_DIR)')"
nt_venv="$("$py" -c 'from benchmarks.common import NT_VENV; print(NT_VENV)')"
if [ ! -x "$nt_venv/bin/python" ]; then
  python3 -m venv "$nt_venv"
fi
"$nt_venv/bin/pip" install -q -r "$here/requirements-nt.txt"
"$nt_venv/bin/pip" install -q --no-deps "neural-tangents==0.6.5"
echo "peers installed under $peers_dir and $nt_venv"
