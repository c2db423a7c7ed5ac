"""Where stage safety's update moves the start policy's arithmetic: the per-token KL from
the start to the trained policy on the start policy's own GSM solutions.

    PYTHONPATH=. python bench/safety_kl_tokens.py --trained OUT/safety \
        (--pairs data/safety/pairs.jsonl | --graded data/eval/rl.jsonl) \
        [--start models/rl] [--base models/base] [--top 15] [--json OUT/kl_tokens.json]

reads the replayed GSM pairs of a safety training mix (PAIRS: both sides of each pair are
the start policy's own samples, or the reference made wrong), or the start policy's greedy
answers to the GSM test (GRADED: evaluate's graded JSONL of the start), scores every completion
token under the start and the trained adapter (full next-token distributions), and prints
KL(start || trained) per token: how much of it the top 1% and 5% of tokens carry, the
share of tokens and of KL on digits, operators and the rest, how many of the top 1% flip
the greedy choice, and the largest. `--trained` is the update as trained (a run at
`safety.interpolation: 1`). The README (Safety) has what it measured.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

OPERATORS = set("+-*/=×x÷")


def token_kind(text: str) -> str:
    """digit (a number piece), operator or other, for a decoded token."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return "digit"
    return "operator" if text and set(text) <= OPERATORS else "other"


def completion_ids(tokenizer, example: dict):
    """A {"prompt", "completion"} conversation as input ids [1, L] and the position of its
    first completion token."""
    from posttrain.generation import render_prompts

    prompt = render_prompts(tokenizer, [example["prompt"]])[0]
    text = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    first = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"], first


def completion_log_probs(model, ids, first: int):
    """float32 next-token log-probs [L - first, vocab] at the positions that predict the
    completion tokens ids[0, first:] (only those go through the 49k-word head)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=ids.shape[1] - first + 1).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def kl_by_token(tokenizer, sequences: list, start, trained) -> list[dict]:
    """One row per completion token of each (input_ids, first completion position): its
    KL(start || trained) between the two models' next-token distributions, its text and
    kind, and whether their greedy choices there differ. One sequence at a time: the
    distributions of a whole test set would take gigabytes."""
    rows = []
    for ids, first in sequences:
        p, q = completion_log_probs(start, ids, first), completion_log_probs(trained, ids, first)
        kl = (p.exp() * (p - q)).sum(-1)
        for token, value, p_top, q_top in zip(ids[0, first:].tolist(), kl.tolist(), p.argmax(-1).tolist(),
                                              q.argmax(-1).tolist()):
            text = tokenizer.decode([token])
            rows.append({"kl": value, "token": text, "kind": token_kind(text), "flipped": p_top != q_top})
    return rows


def summary(rows: list[dict], top: int) -> dict:
    """Concentration of the KL over tokens and its split by token kind."""
    ranked = sorted(rows, key=lambda r: -r["kl"])
    total = sum(r["kl"] for r in rows) or 1.0
    n = len(rows)
    kinds = sorted({r["kind"] for r in rows})
    top_1 = ranked[: max(1, n // 100)]
    return {
        "tokens": n,
        "mean_kl_per_token": round(total / max(1, n), 5),
        "kl_share_of_top_1_percent": round(sum(r["kl"] for r in top_1) / total, 3),
        "kl_share_of_top_5_percent": round(sum(r["kl"] for r in ranked[: max(1, n // 20)]) / total, 3),
        "token_share_by_kind": {k: round(sum(r["kind"] == k for r in rows) / n, 3) for k in kinds},
        "kl_share_by_kind": {k: round(sum(r["kl"] for r in rows if r["kind"] == k) / total, 3) for k in kinds},
        "top_1_percent_by_kind": dict(Counter(r["kind"] for r in top_1)),
        "top_1_percent_greedy_flipped": sum(r["flipped"] for r in top_1),
        "largest": [{"kl": round(r["kl"], 3), "token": r["token"], "flipped": r["flipped"]} for r in ranked[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", required=True, help="the safety adapter as trained (interpolation 1)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="that run's training mix (stage safety's --pairs): its replayed GSM pairs")
    source.add_argument("--graded", help="the start's graded GSM test answers (data/eval/<start>.jsonl)")
    parser.add_argument("--start", default="models/rl", help="the adapter it started from")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--top", type=int, default=15, help="largest tokens to list")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    from posttrain.config import load_params
    from posttrain.generation import gsm_messages
    from posttrain.io import read_jsonl
    from posttrain.models import load_causal_lm, load_tokenizer
    from posttrain.preferences import preference_example
    from posttrain.safety import GSM_REPLAY

    prompt = load_params().prompt
    if args.pairs:
        replay = [preference_example(p, prompt) for p in read_jsonl(args.pairs) if p["source"] == GSM_REPLAY]
        conversations = [{"prompt": e["prompt"], "completion": e[side]}
                         for e in replay for side in ("chosen", "rejected")]
    else:
        conversations = [{"prompt": gsm_messages(r["question"], prompt),
                          "completion": [{"role": "assistant", "content": r["completion"]}]}
                         for r in read_jsonl(args.graded) if r.get("task", "gsm") == "gsm"]
    if not conversations:
        raise SystemExit(f"{args.pairs or args.graded}: no GSM completions (--pairs: a run with "
                         f"safety.replay.fraction above 0; --graded: evaluate's graded JSONL)")
    tokenizer = load_tokenizer(args.base)
    sequences = [completion_ids(tokenizer, c) for c in conversations]
    rows = kl_by_token(tokenizer, sequences, load_causal_lm(args.base, args.start),
                       load_causal_lm(args.base, args.trained))
    result = summary(rows, args.top)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
