"""The T-learner: an arm's uplift is the difference of its outcome model and control's,
``p_arm(x) - p_control(x)``. No effect model: the shared outcome models are the whole learner.
Strong where the outcome models are well regularised; weakest where an arm's effect is small next to
a baseline that varies a lot, since the difference of two models then carries both models' noise."""

from __future__ import annotations

OUT_OF_FOLD = False  # the served outcome models are the whole learner


def effects(nuisance, arm: str, outcome: str | None, params: dict):
    return None
