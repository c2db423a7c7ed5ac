"""RL plumbing shared by the algorithms: TRL reward functions, TRL configs per
algorithm, and the failure-mode monitors computed on sampled completions.
"""

from __future__ import annotations

from statistics import mean

from posttrain.config import RlParams
from posttrain.gsm import grade
from posttrain.rewards import RewardWeights, reward_parts


class CompletionLog:
    """Every sampled completion with its reference, by training step (the monitors read it)."""

    def __init__(self):
        self.steps: list[list[tuple[str, str]]] = []

    def add(self, step: int, completions: list[str], answers: list[str]) -> None:
        while len(self.steps) <= step:
            self.steps.append([])
        self.steps[step] += list(zip(completions, answers))

    # Saved with each resumable checkpoint (posttrain/resume.py), so the monitors of a
    # resumed run still see its first step.
    def state_dict(self) -> dict:
        return {"steps": [[list(pair) for pair in step] for step in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = [[tuple(pair) for pair in step] for step in state["steps"]]


def _text(completion) -> str:
    # TRL passes conversational completions as [{"role": "assistant", "content": ...}].
    return completion[0]["content"] if isinstance(completion, list) else completion


def trl_reward_functions(weights: RewardWeights, log: CompletionLog, max_completion_length: int,
                         reward_model_scorer=None):
    """Reward functions and their weights for TRL's GRPOTrainer / RLOOTrainer:
    sum(w_i * f_i) is exactly posttrain.rewards.total_reward, and TRL logs each part.
    reward_model_scorer(conversations) -> scores is needed when weights.reward_model > 0."""

    def exact(completions, answer, trainer_state, **_):
        texts = [_text(c) for c in completions]
        log.add(trainer_state.global_step, texts, list(answer))
        return [reward_parts(t, a)["exact"] for t, a in zip(texts, answer)]

    def format(completions, answer, **_):  # noqa: A001 - the name TRL shows in its logs
        return [reward_parts(_text(c), a)["format"] for c, a in zip(completions, answer)]

    functions, function_weights = [exact, format], [weights.exact, weights.format]
    if weights.length:
        def length(completions, completion_ids, **_):
            return [-min(len(ids) / max_completion_length, 1.0) for ids in completion_ids]

        functions.append(length)
        function_weights.append(weights.length)
    if weights.reward_model:
        def reward_model(prompts, completions, **_):
            return reward_model_scorer([list(p) + list(c) for p, c in zip(prompts, completions)])

        functions.append(reward_model)
        function_weights.append(weights.reward_model)
    return functions, function_weights


def trl_algorithm_arguments(cfg: RlParams) -> dict:
    """GRPOConfig arguments that make each GRPO-family algorithm what its paper says."""
    if cfg.algorithm == "grpo":
        return {"loss_type": "grpo", "scale_rewards": cfg.scale_rewards}
    if cfg.algorithm == "dr_grpo":  # no std scaling, no length normalisation
        return {"loss_type": "dr_grpo", "scale_rewards": "none"}
    if cfg.algorithm == "dapo":  # token-level loss, clip-higher, truncated completions masked
        return {"loss_type": "dapo", "epsilon_high": cfg.epsilon + 0.08, "mask_truncated_completions": True,
                "scale_rewards": cfg.scale_rewards}
    if cfg.algorithm == "gspo":  # sequence-level importance ratios
        return {"loss_type": "grpo", "importance_sampling_level": "sequence", "scale_rewards": cfg.scale_rewards}
    raise ValueError(f"rl.algorithm: {cfg.algorithm!r} is not a GRPO-family algorithm")


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the texts (1 = no repetition; falls with mode collapse)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def monitors(samples: list[tuple[str, str]]) -> dict:
    """Failure-mode signals on one step's samples (completion, reference answer)."""
    if not samples:
        return {}
    grades = [grade(c, a) for c, a in samples]
    return {
        "strict_accuracy": round(mean(g.strict_correct for g in grades), 4),
        "flexible_accuracy": round(mean(g.flexible_correct for g in grades), 4),
        # Format gaming: the answer line is produced but the number is not the one reasoned to.
        "flexible_minus_strict": round(mean(g.flexible_correct for g in grades) -
                                       mean(g.strict_correct for g in grades), 4),
        "mean_completion_words": round(mean(len(c.split()) for c, _ in samples), 2),
        "distinct_2": distinct_n([c for c, _ in samples], 2),
    }


def drift_report(log: CompletionLog) -> dict:
    """Monitors on the first and last training step, and their change."""
    steps = [s for s in log.steps if s]
    if not steps:
        return {}
    first, last = monitors(steps[0]), monitors(steps[-1])
    return {"first_step": first, "last_step": last,
            "change": {k: round(last[k] - first[k], 4) for k in first}}
