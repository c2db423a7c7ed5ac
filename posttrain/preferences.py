"""Preference pairs from sampled completions checked by the GSM verifier (STaR / ReST).

For each prompt, K sampled completions are graded; a correct one (chosen) is paired
with an incorrect one (rejected). A group with no contrast falls back as params say:
- all wrong:   "skip", or "reference": the reference solution against a sampled wrong answer;
- all correct: "skip", or "corrupt": a correct sample against a copy of the reference
               solution with its last arithmetic step made wrong.
Every pair records its source, so the mix is visible in metrics.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.config import PromptParams
from posttrain.generation import gsm_messages
from posttrain.gsm import grade

SAMPLED = "sampled"
REFERENCE_VS_SAMPLED = "reference_vs_sampled"
SAMPLED_VS_CORRUPTED = "sampled_vs_corrupted"

# "... = 12 stickers": the whole-number result of one arithmetic step. Not part of a
# longer number: "= 1,200" or "= 0.2" are left alone (no clean integer to change).
STEP_RESULT = re.compile(r"=\s*\$?(-?\d+)(?![\d.,]\d)")


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    question: str
    chosen: str
    rejected: str
    source: str

    def as_dict(self) -> dict:
        return {"prompt_id": self.prompt_id, "question": self.question, "chosen": self.chosen,
                "rejected": self.rejected, "source": self.source}


def corrupt_solution(solution: str, rng: random.Random) -> str | None:
    """The solution with its last step's result (and so the final answer) made wrong.

    None when no step has a whole-number result to change.
    """
    lines = solution.split("\n")
    step_indices = [i for i, line in enumerate(lines) if STEP_RESULT.search(line) and not line.startswith("####")]
    if not step_indices:
        return None
    index = step_indices[-1]
    match = list(STEP_RESULT.finditer(lines[index]))[-1]
    right = int(match.group(1))
    # A plausible slip: off by 1-3, and non-negative when the right result is.
    wrong = right + rng.choice([d for d in range(-3, 4) if d and (right < 0 or right + d >= 0)])
    # Repeats of the result later on the line change too (whole numbers only, not "112").
    before, after = lines[index][: match.start(1)], lines[index][match.end(1):]
    after = re.sub(rf"(?<![\d.,]){right}(?![\d.,]\d|\d)", str(wrong), after)
    lines[index] = before + str(wrong) + after
    corrupted = [line for line in lines if not line.startswith("####")] + [f"#### {wrong}"]
    return "\n".join(corrupted)


def _unique(texts: list[str]) -> list[str]:
    seen, unique = set(), []
    for text in texts:
        key = " ".join(text.split())
        if key and key not in seen:
            seen.add(key)
            unique.append(text)
    return unique


def pairs_for_prompt(
    record: dict, samples: list[str], when_all_wrong: str, when_all_correct: str, rng: random.Random
) -> list[Pair]:
    """Pairs for one prompt: every distinct wrong sample against a correct one."""
    samples = _unique(samples)
    correct = [s for s in samples if grade(s, record["answer"]).strict_correct]
    wrong = [s for s in samples if not grade(s, record["answer"]).strict_correct]

    def pair(chosen: str, rejected: str, source: str) -> Pair:
        return Pair(record["id"], record["question"], chosen, rejected, source)

    if correct and wrong:
        return [pair(correct[i % len(correct)], rejected, SAMPLED) for i, rejected in enumerate(wrong)]
    if wrong and when_all_wrong == "reference":
        return [pair(record["solution"], rejected, REFERENCE_VS_SAMPLED) for rejected in wrong]
    if correct and when_all_correct == "corrupt":
        corrupted = corrupt_solution(record["solution"], rng)
        if corrupted is not None and not grade(corrupted, record["answer"]).strict_correct:
            return [pair(correct[0], corrupted, SAMPLED_VS_CORRUPTED)]
    return []


def split_by_prompt(pairs: list[Pair], held_out_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Train / held-out pairs, split by prompt so no held-out prompt is seen in training."""
    prompt_ids = sorted({p.prompt_id for p in pairs})
    random.Random(seed).shuffle(prompt_ids)
    n_held_out = max(1, round(len(prompt_ids) * held_out_fraction)) if len(prompt_ids) > 1 else 0
    held_out_ids = set(prompt_ids[:n_held_out])
    return [p for p in pairs if p.prompt_id not in held_out_ids], [p for p in pairs if p.prompt_id in held_out_ids]


def preference_example(pair: dict, prompt: PromptParams) -> dict:
    """A pair in TRL's conversational preference format (RewardTrainer, DPOTrainer)."""
    return {
        "prompt": gsm_messages(pair["question"], prompt),
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }
