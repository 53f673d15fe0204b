"""Choosing between the exact and the matrix-free NTK from a cost and memory estimate.

FLOP model per measured step (m kernel rows, n samples, C outputs, p parameters, k eigenpairs):

* exact: per rule layer two Grams, 2n²·d_in + 2m²·d_out for a dense layer on vectors, or the
  per-sample gradients n·C·T·p_l plus 2m²·p_l for a sequence/conv layer; the uncovered
  parameters cost a per-sample Jacobian (n·C backward passes, with a 4× allowance for vmap's
  overhead) plus 2m²·p_rest; then the
  eigensolve, ≈ 3(k + 8) explicit products of 2m² each. Memory: three m×m buffers.
* matrix-free: ≈ 3(k + 2) + 10 operator products (warm start, guards, Frobenius probes), each a
  vjp + jvp ≈ 2 GD steps ≈ 12·n·F_sample with F the forward FLOPs per sample, times C for the
  traced kernel.

Layer shapes come from one forward pass over two samples with hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...vocabulary import NTKMethod
from .exact import RULE_TYPES, outside_rules

DEFAULT_MEMORY_BUDGET = 2 * 1024**3  # bytes for the three m×m kernel buffers


@dataclass
class CostEstimate:
    exact_flops: float
    matrix_free_flops: float
    exact_bytes: float
    choice: NTKMethod
    rule_coverage: float = 1.0  # the share of parameters in layers the structured rules cover
    other_layers: tuple[str, ...] = ()  # the types of the layers they do not

    def as_attrs(self) -> dict[str, float | str]:
        return {"cost_exact_gflop": self.exact_flops / 1e9,
                "cost_matrix_free_gflop": self.matrix_free_flops / 1e9,
                "cost_exact_mib": self.exact_bytes / 2**20, "cost_choice": self.choice,
                "ntk_rule_coverage": self.rule_coverage,
                "ntk_other_layers": ", ".join(self.other_layers)}


def estimate_costs(model: nn.Module, X: torch.Tensor, num_outputs: int, kernel: str, k: int,
                   memory_budget: float = DEFAULT_MEMORY_BUDGET) -> CostEstimate:
    n, C = X.shape[0], num_outputs
    m = n if kernel == "traced" or C == 1 else n * C
    shapes: dict[nn.Module, tuple[torch.Size, torch.Size]] = {}
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        shapes[module] = (inputs[0].shape, output.shape)

    handles = [mod.register_forward_hook(hook) for mod in model.modules()
               if isinstance(mod, RULE_TYPES)]
    try:
        with torch.no_grad():
            model(X[:2])
    finally:
        for h in handles:
            h.remove()

    p_total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    forward_per_sample = 0.0
    exact = 0.0
    covered = 0
    for module, (shape_in, shape_out) in shapes.items():
        p_layer = sum(p.numel() for p in module.parameters(recurse=False))
        positions = shape_out[2:].numel() if isinstance(module, (nn.Conv1d, nn.Conv2d)) else \
            shape_in[1:-1].numel()
        forward_per_sample += 2 * p_layer * max(positions, 1)
        if calls[module] != 1:
            continue
        covered += p_layer
        if isinstance(module, nn.Linear) and len(shape_in) == 2:
            exact += 2 * n * n * module.in_features + 2 * m * m * module.out_features
        else:
            exact += n * C * max(positions, 1) * p_layer + 2 * m * m * p_layer
    rest = p_total - covered
    if rest:  # per-sample vmap(jacrev) runs far below peak: allow 4× its FLOP count
        exact += 4 * n * C * 3 * forward_per_sample + 2 * m * m * rest
    exact += 3 * (k + 8) * 2 * m * m
    products = 3 * (k + 2) + 10
    matrix_free = products * 12 * n * forward_per_sample * (C if kernel == "traced" and C > 1
                                                           else 1)
    exact_bytes = 3 * m * m * X.element_size()
    fits = exact_bytes <= memory_budget
    choice: NTKMethod = "exact" if fits and exact <= matrix_free else "matrix_free"
    # reused rule layers (weights shared across calls) join the layers no rule covers
    other = sorted(set(outside_rules(model)) | {type(module).__name__ for module in shapes
                                                 if calls[module] != 1})
    return CostEstimate(exact, matrix_free, exact_bytes, choice,
                        covered / p_total if p_total else 1.0, tuple(other))
