"""Rerun the paper's experiments at small scale and write ``docs/reproduction.md`` with its
figures, stating for each claim whether it reproduced (``ntk-eos reproduce``).

Jiang, Cohen, Li (2025), "Understanding the Evolution of the NTK at the Edge of Stability".
For an MLP, a CNN and a small ViT (``grid``): a learning-rate × seed sweep
(``ntk_core.experiments.sweep``) in which every run stops at the same target loss (matched-loss
protocol), then (``figures``)

(a) KTA over steps, one curve per η (paper Fig. 1a);
(b) a_i against the normalised eigenvalue λ_i/‖K‖_F of the final NTK's top 20, per η (Fig. 1b);
(c) one run's loss, sharpness against 2/η, and KTA (Fig. 1c);
(d) final KTA, a₁ and A₂₀ against η, mean ± std over seeds;
(e) the two-layer linear network: predicted against simulated final KTA and a² (``theory``).

Every verdict in the report (``report``) is computed from these runs (``statistics``). KTA and
the eigen-alignments a₁, A_k can move in opposite directions (KTA = Σ λ̃_i a_i), so all three are
reported. ``pipeline.reproduce`` runs it all; ``ntk_core.cli.reproduce`` is its command line.
"""

from .pipeline import ReproductionError, reproduce

__all__ = ["ReproductionError", "reproduce"]
