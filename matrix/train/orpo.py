"""ORPO, odds ratio preference optimization (Hong et al., 2024, arXiv 2403.07691): SFT and
preference alignment in one loss, with no reference model.

    L = L_SFT + beta * L_OR,   L_OR = -log sigmoid(log odds(y_w | x) - log odds(y_l | x)),
    odds(y | x) = P(y | x) / (1 - P(y | x)),  log P(y | x) = mean label log-prob of y,

L_SFT is the per-token negative log-likelihood of the chosen answers (`beta` is the paper's
lambda, 0.1 by default as in its experiments). Rewards are `beta * log P`, as TRL logs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from matrix.train.dpo import PairStats, ReferenceFreePairsModule, preference_metrics


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp) < 1; log(1 - p) = log(-expm1(log p)) keeps
    precision for p near 1 (log1p(-exp(x)) would round to log(0))."""
    return mean_logp - torch.log(-torch.expm1(mean_logp))


def orpo_loss(s: PairStats, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    nll = -s.chosen.sum() / s.chosen_tokens.sum().clamp(min=1)
    ratio = F.logsigmoid(log_odds(s.chosen_mean) - log_odds(s.rejected_mean))
    loss = nll - beta * ratio.mean()
    metrics = preference_metrics(loss, beta * s.chosen_mean, beta * s.rejected_mean, s)
    return loss, {**metrics, "nll": float(nll.detach()), "log_odds_ratio": float(ratio.mean())}


class ORPOModule(ReferenceFreePairsModule):
    """ORPO on `prompt`/`chosen`/`rejected` rows (conf/objective/orpo.yaml: `beta`)."""

    def __init__(self, *args, beta: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)

    def pair_loss(self, s: PairStats) -> tuple[torch.Tensor, dict[str, float]]:
        return orpo_loss(s, self.beta)
