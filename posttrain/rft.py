"""Rejection-sampling fine-tuning (STaR, ReST, expert iteration): stage rft.

A round samples the current policy on GSM prompts, keeps the completions the verifier
finds correct (strict check), and continues SFT of the adapter on them. What is kept
is always verified: a round that finds nothing correct trains on nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from posttrain.config import PromptParams
from posttrain.generation import gsm_messages
from posttrain.gsm import grade


@dataclass
class RoundYield:
    """What one round's sampling gave."""

    prompts: int
    samples: int
    correct_samples: int  # strict-correct samples, duplicates included
    prompts_solved: int  # prompts with at least one correct sample (pass@k on the training prompts)
    kept: int  # distinct correct samples kept for training (at most keep_per_prompt per prompt)

    @property
    def sample_accuracy(self) -> float:
        """The policy's strict accuracy on its training prompts at the sampling temperature."""
        return round(self.correct_samples / self.samples, 4) if self.samples else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "sample_accuracy": self.sample_accuracy,
                "pass_at_k": round(self.prompts_solved / self.prompts, 4) if self.prompts else 0.0}


def verified_samples(records: list[dict], groups: list[list[str]], keep_per_prompt: int,
                     ) -> tuple[list[tuple[dict, str]], RoundYield]:
    """(record, completion) for up to keep_per_prompt distinct strict-correct completions
    of each record (in sampling order; whitespace-only differences count as duplicates),
    and the round's yield."""
    kept, correct, solved = [], 0, 0
    for record, group in zip(records, groups, strict=True):
        seen, mine = set(), []
        for completion in group:
            if not grade(completion, record["answer"]).strict_correct:
                continue
            correct += 1
            key = " ".join(completion.split())
            if key not in seen and len(mine) < keep_per_prompt:
                seen.add(key)
                mine.append((record, completion))
        solved += bool(mine)
        kept += mine
    return kept, RoundYield(len(records), sum(len(g) for g in groups), correct, solved, len(kept))


def sft_conversations(kept: list[tuple[dict, str]], prompt: PromptParams) -> list[dict]:
    """The kept samples as TRL conversational SFT examples, in the pipeline's prompt format."""
    return [{"messages": gsm_messages(record["question"], prompt) + [{"role": "assistant", "content": completion}]}
            for record, completion in kept]
