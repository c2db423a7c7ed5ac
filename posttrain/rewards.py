"""The verifiable GSM reward every RL algorithm uses.

    R = w_exact * R_exact + w_format * R_format  [+ w_rm * RM(x, y)]  [- w_length * len(y) / max_len]

- R_exact  = 1 when the strictly parsed final answer (`#### N`) equals the reference;
- R_format = 1 whenever the strict parser finds a well-formed `#### N` line, right or
  wrong: a small shaping bonus that teaches the format early (w_format << w_exact, so
  a right answer always beats a merely well-formatted one);
- optional, off by default: the reward model's score, and a length penalty in
  [0, w_length] proportional to the completion's share of the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.gsm import grade


@dataclass(frozen=True)
class RewardWeights:
    exact: float = 1.0
    format: float = 0.1
    reward_model: float = 0.0
    length: float = 0.0


def reward_parts(completion: str, reference_answer: str) -> dict[str, float]:
    """The verifier's parts, each 0 or 1."""
    g = grade(completion, reference_answer)
    return {"exact": float(g.strict_correct), "format": float(g.well_formatted)}


def total_reward(
    parts: dict[str, float],
    weights: RewardWeights,
    reward_model_score: float | None = None,
    length_fraction: float | None = None,
) -> float:
    """Weighted sum of the parts; the optional terms count only when their weight is set."""
    reward = weights.exact * parts["exact"] + weights.format * parts["format"]
    if weights.reward_model:
        if reward_model_score is None:
            raise ValueError("reward weight reward_model is set but no reward-model score was given")
        reward += weights.reward_model * reward_model_score
    if weights.length:
        if length_fraction is None:
            raise ValueError("reward weight length is set but no completion length was given")
        reward -= weights.length * min(max(length_fraction, 0.0), 1.0)
    return reward
