"""The DP optimizer: Gaussian noise once per logical step on the clipped sum, SGD/Adam/AdamW after."""

from dpscope.optim.dp_optimizer import DPOptimizer, DropRule, make_dp_optimizer, make_torch_optimizer
from dpscope.optim.dropping import random_drop_rule
from dpscope.optim.noise import GaussianNoise, secure_standard_normal

__all__ = ["DPOptimizer", "DropRule", "GaussianNoise", "make_dp_optimizer", "make_torch_optimizer", "random_drop_rule",
           "secure_standard_normal"]
