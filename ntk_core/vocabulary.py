"""The words the engine, its files and the app share: a run's status, the kernel choices and
the optimisers.

A status is stored in a run's attributes, and in a sweep's ``status`` variable, as its plain
text (``"reached_target"``), so files read the same without this module. ``RunStatus`` members
are that text too: they compare, hash and format as the string, so a member and the string
read from a file are interchangeable in comparisons, sets and dict keys.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal


class RunStatus(str, Enum):
    """Where a run stands: the first three while it can still step, the last five once it
    ended (``TERMINAL``)."""

    READY = "ready"  # built, not stepping yet
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"  # the step budget
    REACHED_TARGET = "reached_target"  # the target loss (the matched-loss protocol)
    DIVERGED = "diverged"  # a non-finite loss, or one above divergence_factor × the first
    STOPPED = "stopped"  # by request, or by a callback
    FAILED = "failed"  # an exception inside a step; the message is the status reason

    __str__ = str.__str__
    __hash__ = str.__hash__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)

    @property
    def terminal(self) -> bool:
        """The run has ended: no step follows."""
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.REACHED_TARGET, RunStatus.DIVERGED,
                      RunStatus.STOPPED, RunStatus.FAILED})

NTKMethod = Literal["exact", "matrix_free"]  # an explicit kernel, or vjp/jvp products
NTKMode = Literal["auto", NTKMethod]  # auto: the cheaper method by the cost model
KernelKind = Literal["full", "traced"]  # the (nC × nC) kernel, or Σ_c K_cc (n × n)
# full-batch GD (with optional heavy-ball or Nesterov momentum), mini-batch SGD, and the two
# adaptive methods, which take their steps in the metric of a diagonal preconditioner
OptimizerName = Literal["gd", "sgd", "adam", "rmsprop"]
# processes that run beside gradient descent from its initial weights: its central flow
# (Cohen et al. 2025) and gradient flow; a run's own process is "gd"
FlowName = Literal["central", "stable"]
GD_PROCESS = "gd"
