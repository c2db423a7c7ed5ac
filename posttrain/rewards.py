"""The verifiable GSM reward every RL algorithm uses.

    R = w_exact * R_exact + w_format * R_format  [+ w_arith * R_arithmetic]  [+ w_rm * RM(x, y)]
        [- w_length * len(y) / max_len]

- R_exact  = 1 when the strictly parsed final answer (`#### N`) equals the reference;
- R_format = 1 whenever the strict parser finds a well-formed `#### N` line, right or
  wrong: a small shaping bonus that teaches the format early (w_format << w_exact, so
  a right answer always beats a merely well-formatted one);
- R_arithmetic = 1 when the completion writes at least one equation ("3 * 15 = 45") and
  every one it writes is true (posttrain/equations.py): a verifiable check of each step,
  not only of the last line. Off by default. Why it exists: most of SFT's wrong answers
  on the phrasings it trained on are slips in a step it set up right (3 * 15 = 42). Why
  it is off: on those phrasings it repeats R_exact (of SFT's 250 greedy answers there,
  248 are right with every step true or wrong with a false one), and at 0.5 it moved the
  test by -1.0 to -1.4 points (README, RL). All-or-nothing, so writing more true
  equations pays nothing, and a completion with none earns none;
- optional, off by default: the reward model's score, and a length penalty in
  [0, w_length] proportional to the completion's share of the token budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.equations import equations_checked
from posttrain.gsm import grade


@dataclass(frozen=True)
class RewardWeights:
    exact: float = 1.0
    format: float = 0.1
    arithmetic: float = 0.0
    reward_model: float = 0.0
    length: float = 0.0


def reward_parts(completion: str, reference_answer: str) -> dict[str, float]:
    """The verifier's parts, each 0 or 1."""
    g = grade(completion, reference_answer)
    written, wrong = equations_checked(completion)
    return {"exact": float(g.strict_correct), "format": float(g.well_formatted),
            "arithmetic": float(written > 0 and wrong == 0)}


def total_reward(
    parts: dict[str, float],
    weights: RewardWeights,
    reward_model_score: float | None = None,
    length_fraction: float | None = None,
) -> float:
    """Weighted sum of the parts; the optional terms count only when their weight is set."""
    reward = (weights.exact * parts["exact"] + weights.format * parts["format"]
              + weights.arithmetic * parts["arithmetic"])
    if weights.reward_model:
        if reward_model_score is None:
            raise ValueError("reward weight reward_model is set but no reward-model score was given")
        reward += weights.reward_model * reward_model_score
    if weights.length:
        if length_fraction is None:
            raise ValueError("reward weight length is set but no completion length was given")
        reward -= weights.length * min(max(length_fraction, 0.0), 1.0)
    return reward
