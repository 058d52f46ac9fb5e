"""Differential privacy bookkeeping: accounting (through dp_accounting), calibration, ledger, plan.

No epsilon arithmetic of our own: runs are described as dp_accounting events and composed there.
"""

from dpscope.privacy.accounting import (
    ACCOUNTANTS,
    PLD_VALUE_DISCRETIZATION_INTERVAL,
    RDP_ORDERS,
    Accountant,
    delta_for_event,
    delta_spent,
    dp_sgd_event,
    epsilon_for_event,
    epsilon_for_segments,
    epsilon_spent,
    make_accountant,
)
from dpscope.privacy.calibration import max_steps_within, noise_multiplier_for
from dpscope.privacy.ledger import PrivacyLedger
from dpscope.privacy.plan import (
    ClipKind,
    PrivacyPlan,
    default_delta,
    equal_per_layer_split,
    steps_per_epoch,
)

__all__ = [
    "ACCOUNTANTS",
    "PLD_VALUE_DISCRETIZATION_INTERVAL",
    "RDP_ORDERS",
    "Accountant",
    "ClipKind",
    "PrivacyLedger",
    "PrivacyPlan",
    "default_delta",
    "delta_for_event",
    "delta_spent",
    "dp_sgd_event",
    "epsilon_for_event",
    "epsilon_for_segments",
    "epsilon_spent",
    "equal_per_layer_split",
    "make_accountant",
    "max_steps_within",
    "noise_multiplier_for",
    "steps_per_epoch",
]
