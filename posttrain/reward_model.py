"""The reward model at work: its scalar score of whole conversations, a histogram of
scores, and best-of-N selection by score against a majority vote. Stages reward_model,
best_of_n and rl use these; none of them depends on evaluation's refusal reading.
"""

from __future__ import annotations

from posttrain.gsm import grade, numbers_equal
from posttrain.runtime import use_bf16
from posttrain.stats import rate


def score_texts(reward_model, tokenizer, conversations: list[list[dict]], batch_size: int = 16,
                bf16: bool = True) -> list[float]:
    """The reward model's scalar score for each full conversation (prompt and answer).

    Batches are formed longest first (little padding computed) and right-padded with the
    tokenizer's pad token, as the reward model was trained; the tokenizer is not changed.
    bf16: autocast on CPU (avx512_bf16: about 2x faster than fp32 here)."""
    import torch

    token_ids = [tokenizer(tokenizer.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]
                 for c in conversations]
    order = sorted(range(len(token_ids)), key=lambda i: (-len(token_ids[i]), i))
    device = next(reward_model.parameters()).device
    scores = [0.0] * len(token_ids)
    bf16 = use_bf16(bf16, "reward model scoring") and device.type == "cpu"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            width = max(len(token_ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
                attention_mask[row, : len(token_ids[i])] = 1
            logits = reward_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0].float())
    return scores


def histogram(values: dict[str, list[float]], bins: int) -> list[dict]:
    """Shared-bin counts of several score lists, rows for a DVC plot: {bin, <name>: count}."""
    everything = [v for vs in values.values() for v in vs]
    low, high = min(everything), max(everything)
    width = (high - low) / bins or 1.0
    rows = [{"bin": round(low + (i + 0.5) * width, 4), **{name: 0 for name in values}} for i in range(bins)]
    for name, vs in values.items():
        for v in vs:
            rows[min(int((v - low) / width), bins - 1)][name] += 1
    return rows


def majority_vote(answers: list[str | None]) -> str | None:
    """The most common extracted answer (ties: the one seen first); None if none parsed."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=counts.get) if counts else None  # dicts keep first-seen order for ties


def best_of_n_metrics(references: list[str], samples: list[list[str]], scores: list[list[float]],
                      greedy_correct: list[bool]) -> dict:
    """Test-time scaling with N samples per problem: the reward model's top pick, a
    majority vote over extracted answers, greedy decoding, and pass@N (any sample right)."""
    rm_pick, vote, any_right = [], [], []
    for reference, group, group_scores in zip(references, samples, scores, strict=True):
        grades = [grade(s, reference) for s in group]
        best = max(range(len(group)), key=lambda i: group_scores[i])
        rm_pick.append(grades[best].strict_correct)
        vote.append(numbers_equal(majority_vote([g.strict for g in grades]), reference))
        any_right.append(any(g.strict_correct for g in grades))
    return {
        "n_problems": len(references),
        "n_samples": len(samples[0]) if samples else 0,
        "reward_model_top_pick_accuracy": rate(rm_pick),
        "majority_vote_accuracy": rate(vote),
        "greedy_accuracy": rate(greedy_correct),
        "pass_at_n": rate(any_right),
    }
