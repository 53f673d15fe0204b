"""Smoke test of the benchmark suite (benchmarks/): the harness runs on tiny workloads, and the peer
re-implementations agree numerically with the engine and with float64 references."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import harness, peers, run  # noqa: E402
from benchmarks.common import NT_PYTHON, ensure_torch_peers  # noqa: E402
from benchmarks.reference import float64_copy, gate_flips, sharpness_reference  # noqa: E402
from benchmarks.workloads import SPECS, tiny  # noqa: E402
from ntk_core import RunConfig, empirical_ntk  # noqa: E402
from ntk_core.experiments.bench import Workload  # noqa: E402

# The peers re-implemented here always run; the third-party ones (PyHessian, hessian-eigenthings,
# nngeometry) are installed into the per-user peer folder on first use, and their tests are
# skipped, with pip's reason, where that cannot be done (no network).
OWN_KERNEL_PEERS = ("jacrev", "ntk_vps")
OWN_HESSIAN_PEERS = ("eigsh_cold", "lobpcg_warm", "ours_prev_only")
THIRD_PARTY_PEERS = ("pyhessian_top1", "eigenthings", "nngeometry")


@pytest.fixture(scope="module")
def tiny_w1() -> dict:
    names = OWN_KERNEL_PEERS + OWN_HESSIAN_PEERS + THIRD_PARTY_PEERS
    return harness.run_workload(tiny(SPECS["W1"]), steps=3, check_every=3, peer_names=names,
                                quick=True)


def require_third_party_peers() -> None:
    why_not = ensure_torch_peers()
    if why_not is not None:
        pytest.skip(f"third-party peers not installed: {why_not}")


def test_tiny_workload_reports_ratios_products_and_accuracy(tiny_w1: dict) -> None:
    r = tiny_w1["ratio_to_gd"]
    for key in ("ntk", "topk", "kta", "ntk+topk+kta", "sharpness", "sharpness_standalone"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert tiny_w1["ours"]["topk"]["products_median"] > 0
    assert tiny_w1["ours"]["hvp_cold"]["products_median"] > 0
    assert tiny_w1["errors"]["topk"]["max"] < 1e-3
    assert tiny_w1["errors"]["sharpness"]["max"] < 1e-3
    assert tiny_w1["errors"]["kta_abs"]["max"] < 1e-5
    assert tiny_w1["memory_mib"]["peak"] >= tiny_w1["memory_mib"]["baseline"] > 0
    for name in OWN_KERNEL_PEERS + OWN_HESSIAN_PEERS:
        assert tiny_w1["peers"][name]["ratio_to_gd"] > 0, name
    table = run.format_table({"W1": tiny_w1}) + run.format_targets(run.targets({"W1": tiny_w1}))
    assert "NTK + top-k + KTA" in table and "peer jacrev" in table and "targets:" in table
    json.dumps(tiny_w1)  # the harness output is plain JSON


def assert_kernel_peer_matches(res: dict, name: str) -> None:
    # the kernel peer matched the float64 reference K at the checks
    assert res["peers"][name]["kernel_err_median"] < 1e-5, name
    assert res["peers"][name].get("err_max", 0.0) < 1e-4, name


def assert_hessian_peer_matches(res: dict, name: str) -> None:
    # the Hessian peer, calibrated to 1e-4, lands within a small multiple of it
    assert res["peers"][name]["err_max"] < 1e-3, name


def test_kernel_peers_agree_with_the_structured_kernel(tiny_w1: dict) -> None:
    for name in OWN_KERNEL_PEERS:
        assert_kernel_peer_matches(tiny_w1, name)


def multi_output_workload() -> Workload:
    return Workload(RunConfig(dataset="digits", n=24, classes=(0, 1, 2), target="onehot", arch="mlp",
                              width=8, depth=2, dtype="float64"))


@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_torch_func_tutorial_kernels_match_multi_output(kernel: str) -> None:
    w = multi_output_workload()
    K = empirical_ntk(w.model, w.X, kernel)
    for build in (peers.jacrev_kernel, peers.ntk_vps_kernel):
        assert torch.allclose(build(w.model, w.X, kernel), K, rtol=1e-9, atol=1e-9)


def test_hessian_peers_agree_with_the_reference(tiny_w1: dict) -> None:
    for name in OWN_HESSIAN_PEERS:
        assert_hessian_peer_matches(tiny_w1, name)


def test_third_party_peers_run_and_agree(tiny_w1: dict) -> None:
    require_third_party_peers()
    assert not tiny_w1["peers_skipped"]
    assert_kernel_peer_matches(tiny_w1, "nngeometry")
    for name in ("pyhessian_top1", "eigenthings"):
        assert_hessian_peer_matches(tiny_w1, name)
    for name in THIRD_PARTY_PEERS:
        assert tiny_w1["peers"][name]["ratio_to_gd"] > 0, name


@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_nngeometry_kernel_matches_multi_output(kernel: str) -> None:
    require_third_party_peers()
    w = multi_output_workload()
    K = empirical_ntk(w.model, w.X, kernel)
    assert torch.allclose(peers.nngeometry_kernel(w.model, w.X, kernel), K, rtol=1e-9, atol=1e-9)


def test_sharpness_reference_matches_the_dense_hessian() -> None:
    cfg = RunConfig(dataset="digits", n=20, classes=(0, 1), target="binary", arch="mlp", width=6,
                    depth=2)
    w = Workload(cfg)
    m = float64_copy(w.model)
    params = list(m.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss(theta):
        i, out = 0, {}
        for name, p in m.named_parameters():
            out[name] = theta[i:i + p.numel()].view_as(p)
            i += p.numel()
        f = torch.func.functional_call(m, out, (w.X.double(),))
        return 0.5 * ((f - w.Y.double()) ** 2).sum() / w.X.shape[0]

    H = torch.autograd.functional.hessian(loss, flat)
    assert sharpness_reference(w.model, w.X, w.Y) == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]),
                                                                    rel=1e-8)


def test_matrix_free_workload_and_operator_peers() -> None:
    res = harness.run_workload(tiny(SPECS["W4"], n=24), steps=3, check_every=3,
                               peer_names=("eigsh_ntk_cold", "lobpcg_ntk_warm"), quick=True)
    assert res["mode"] == "matrix_free" and res["ratio_to_gd"]["matrix_free"] > 0
    assert res["errors"]["topk"]["max"] < 1e-3
    for name in ("eigsh_ntk_cold", "lobpcg_ntk_warm"):
        assert res["peers"][name]["err_max"] < 1e-3, name


def test_a_workload_measured_every_few_steps() -> None:
    """W5 shrunk: GD steps between the measurements are timed (the unit) but not measured, the
    check lands on the last measured step, and its errors are against the references there."""
    spec = tiny(SPECS["W5"], n=40)
    assert spec.measure_every == 2 and not spec.cold_calls
    res = harness.run_workload(spec, steps=6, check_every=6, quick=True)
    assert res["mode"] == "matrix_free"
    assert len(res["trajectory"]["sharpness"]) == 4  # steps 0, 2, 4, 6
    assert res["ours"]["gd"]["repeats"] == 4 and res["ours"]["matrix_free"]["repeats"] == 2
    assert res["errors"]["topk"]["count"] == 1 and res["errors"]["topk"]["max"] < 1e-3
    assert res["errors"]["sharpness"]["max"] < 1e-3
    assert "cold_sharpness" not in res["errors"]
    # the peers that need no kernel run at its one check, against the same references
    for name in ("eigsh_ntk_cold", "lobpcg_ntk_warm", "eigsh_cold", "lobpcg_warm", "ours_prev_only"):
        assert res["peers"][name]["err_max"] < 1e-3, name


@pytest.mark.skipif(not NT_PYTHON.exists(),
                    reason="neural-tangents venv not set up (bash benchmarks/setup_peers.sh)")
def test_neural_tangents_kernel_matches(tmp_path: Path) -> None:
    spec = tiny(SPECS["W1"])
    w = Workload(spec.config)
    K = empirical_ntk(float64_copy(w.model), w.X.double(), "full")
    values = torch.linalg.eigvalsh(K).flip(0)[:4]
    peers.save_weights(w, str(tmp_path / "w.npz"), {"K": K, "values": values})
    subprocess.run([str(NT_PYTHON), str(ROOT / "benchmarks" / "peer_nt.py"), str(tmp_path / "w.npz"),
                    "--repeats", "1", "--k", "4", "--only", "nt_structured_derivatives",
                    "--json", str(tmp_path / "nt.json")], check=True, capture_output=True)
    out = json.loads((tmp_path / "nt.json").read_text())
    assert out["nt_structured_derivatives"]["kernel_err"] < 1e-5


class _PrecisionNudge(nn.Module):
    """+1e-12 in float64, -1e-12 in float32: a pre-activation of exactly 0 opens its ReLU gate
    in one precision and closes it in the other, as rounding does near 0 in a trained net."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (1e-12 if x.dtype == torch.float64 else -1e-12)


def test_references_keep_the_float32_models_relu_gates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), _PrecisionNudge(), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[0].bias[0] = 0.0  # unit 0's pre-activation is exactly 0 on every sample
    X = torch.randn(6, 3)
    assert gate_flips(model, X) == 6
    measured = empirical_ntk(model, X, "full").double()  # the float32 model, its own gates
    pinned = empirical_ntk(float64_copy(model, X), X.double(), "full")
    free = empirical_ntk(float64_copy(model), X.double(), "full")
    assert torch.allclose(pinned, measured, rtol=1e-5, atol=1e-6)
    assert (free - pinned).abs().max() > 1e-2  # unit 0's incoming weights count only when open
    with pytest.raises(ValueError, match="recorded inputs"):
        float64_copy(model, X)(X[:3].double())
