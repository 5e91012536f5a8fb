"""SimPO, simple preference optimization with a reference-free reward (Meng et al., 2024,
arXiv 2405.14734): the reward is the length-normalised log-likelihood, and a target margin
`gamma` separates the two answers.

    L = -log sigmoid(beta / |y_w| * log pi(y_w | x) - beta / |y_l| * log pi(y_l | x) - gamma)

Defaults: beta 2.0, gamma 1.0 (gamma / beta = 0.5), the paper's Llama-3-8B base setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matrix.train.dpo import PairStats, ReferenceFreePairsModule, preference_metrics


def simpo_loss(s: PairStats, beta: float, gamma: float) -> tuple[torch.Tensor, dict[str, float]]:
    chosen_reward, rejected_reward = beta * s.chosen_mean, beta * s.rejected_mean
    loss = -F.logsigmoid(chosen_reward - rejected_reward - gamma).mean()
    return loss, preference_metrics(loss, chosen_reward, rejected_reward, s)


class SimPOModule(ReferenceFreePairsModule):
    """SimPO on `prompt`/`chosen`/`rejected` rows (conf/objective/simpo.yaml: `beta`,
    `gamma`)."""

    def __init__(self, *args, beta: float = 2.0, gamma: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.gamma = float(beta), float(gamma)

    def pair_loss(self, s: PairStats) -> tuple[torch.Tensor, dict[str, float]]:
        return simpo_loss(s, self.beta, self.gamma)
