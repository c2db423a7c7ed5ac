"""REINFORCE with an exponential-moving-average baseline: our own trainer, since no
library has it.

For each sampled completion y of prompt x with reward R(y):

    advantage   A = R(y) - b_{t-1}
    loss        L = -(1/B) * sum_i A_i * sum_{t in y_i} log pi_theta(y_i,t | x_i, y_i,<t)
                    + kl_coef * (1/B) * sum_i sum_t (log pi_theta - log pi_ref)(y_i,t)
    baseline    b_t = beta * b_{t-1} + (1 - beta) * mean_i R(y_i)     (after the update)

Normalisation: the log-probabilities are summed over each completion's tokens (not
averaged), then averaged over the B completions of the batch. That is the unbiased
REINFORCE gradient of the expected sequence reward; averaging over tokens instead
would weight short completions' tokens more. The baseline is updated only after the
batch it scored, so it never depends on the samples it is subtracted from and the
gradient stays unbiased. Log-probabilities are those of the sampling distribution
(logits / temperature). The KL term (k1 estimator on the sampled tokens) is optional
and off when kl_coef = 0; the reference is the starting checkpoint, held as a frozen
second adapter "ref" on the same base model (as TRL does for GRPO).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmaBaseline:
    """b_t = beta * b_{t-1} + (1 - beta) * mean(rewards_t), starting from `value`."""

    beta: float = 0.9
    value: float = 0.0

    def advantages(self, rewards: list[float]) -> list[float]:
        return [r - self.value for r in rewards]

    def update(self, rewards: list[float]) -> float:
        if rewards:
            self.value = self.beta * self.value + (1 - self.beta) * (sum(rewards) / len(rewards))
        return self.value


def completion_logprobs(model, input_ids, attention_mask, completion_mask, temperature: float = 1.0):
    """Per-token log pi(y_t | x, y_<t) of the completion tokens (0 elsewhere), shape [B, T-1].

    The logits are divided by the sampling temperature: the gradient must be that of
    the distribution the completions were actually sampled from.
    """
    return token_logprobs(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids,
                          completion_mask, temperature)


def token_logprobs(logits, input_ids, completion_mask, temperature: float = 1.0):
    """completion_logprobs from a forward pass's logits [B, T, V] (for a caller that also
    needs the pass's hidden states)."""
    import torch

    logits = logits[:, :-1].float() / temperature
    targets = input_ids[:, 1:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logprobs * completion_mask[:, 1:]


def reinforce_loss(token_logprobs, advantages, ref_token_logprobs=None, kl_coef: float = 0.0):
    """The loss above, and the mean per-sequence KL estimate (0 without a reference)."""
    import torch

    sequence_logprobs = token_logprobs.sum(dim=-1)
    loss = -(advantages * sequence_logprobs).mean()
    kl = torch.zeros((), device=token_logprobs.device)
    if ref_token_logprobs is not None:
        kl = (token_logprobs - ref_token_logprobs).sum(dim=-1).mean()
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, kl.detach()


REFERENCE_ADAPTER = "ref"


def reinforce_step(model, optimizer, input_ids, attention_mask, completion_mask, rewards: list[float],
                   baseline: EmaBaseline, kl_coef: float = 0.0, max_grad_norm: float = 1.0,
                   temperature: float = 1.0) -> dict:
    """One policy-gradient update on a batch of sampled completions; then the baseline moves.

    With kl_coef > 0 the model must hold a frozen adapter named "ref" (the starting
    checkpoint, as TRL does for GRPO); the KL is taken against it.
    """
    import torch

    advantages = torch.tensor(baseline.advantages(rewards), dtype=torch.float32, device=input_ids.device)
    ref = None
    if kl_coef:
        model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)  # stays frozen
        with torch.no_grad():
            ref = completion_logprobs(model, input_ids, attention_mask, completion_mask, temperature)
        model.set_adapter("default")
    # Eval mode (gradients still flow): LoRA dropout would make the log-probs those of
    # a perturbed policy, not of the one the completions were sampled from.
    model.eval()
    token_logprobs = completion_logprobs(model, input_ids, attention_mask, completion_mask, temperature)
    loss, kl = reinforce_loss(token_logprobs, advantages, ref, kl_coef)
    optimizer.zero_grad()
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    used_baseline = baseline.value
    baseline.update(rewards)
    return {"loss": loss.item(), "kl": kl.item(), "grad_norm": grad_norm.item(),
            "baseline": used_baseline, "mean_advantage": advantages.mean().item()}


def sample_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, sampler=None):
    """Sample one completion per prompt, keeping the sampled token ids (re-tokenising the
    decoded text could give other tokens than the ones whose log-probs we train on).
    sampler: a posttrain.rl.VllmSampler holding the model's current weights, or None for
    transformers' generate(); both give the same tensors."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    prompt_length = batch["input_ids"].shape[1]
    if sampler is not None:
        prompt_ids = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        sampled = sampler.sample(prompt_ids, max_new_tokens, temperature)
        width = max(1, max(len(ids) for ids in sampled))
        completion = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in sampled],
                                  dtype=batch["input_ids"].dtype)
        sequences = torch.cat([batch["input_ids"], completion], dim=1)
    else:
        model.eval()
        with torch.no_grad():
            sequences = model.generate(**batch, do_sample=True, temperature=temperature, top_p=1.0, top_k=None,
                                       max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    completion = sequences[:, prompt_length:]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    is_stop = torch.zeros_like(completion, dtype=torch.bool)
    for stop in stops:
        is_stop |= completion == stop
    # Completion tokens: everything up to and including the first end-of-turn token.
    after_stop = (is_stop.cumsum(dim=1) - is_stop.long()) > 0
    completion_mask = (~after_stop).long()
    attention_mask = torch.cat([batch["attention_mask"], completion_mask], dim=1)
    full_completion_mask = torch.cat([torch.zeros_like(batch["attention_mask"]), completion_mask], dim=1)
    texts = tokenizer.batch_decode(completion * completion_mask + tokenizer.pad_token_id * (1 - completion_mask),
                                   skip_special_tokens=True)
    return sequences, attention_mask, full_completion_mask, [t.strip() for t in texts], completion_mask.sum(1).tolist()


@dataclass
class ScoredBatch:
    """One step's samples: the token tensors the update trains on, each completion's
    reward, and the reward and length figures every algorithm logs."""

    sequences: object
    attention_mask: object
    completion_mask: object
    rewards: list[float]
    metrics: dict[str, float]


def sample_and_score(model, tokenizer, prompts: list[str], answers: list[str], reward_fn, cfg, log, step: int,
                     sampler=None) -> ScoredBatch:
    """Step `step`'s batch: num_generations completions for each of prompts_per_step
    prompts (cycling through them), sampled from the current weights (the sampler synced
    first), scored by reward_fn and added to the completion log."""
    picked = [(step * cfg.prompts_per_step + i) % len(prompts) for i in range(cfg.prompts_per_step)]
    rows = [i for i in picked for _ in range(cfg.num_generations)]
    batch_answers = [answers[i] for i in rows]
    if sampler is not None:
        sampler.sync()  # the weights of the last update (or of the start, or of a resumed checkpoint)
    sequences, attention_mask, completion_mask, texts, lengths = sample_batch(
        model, tokenizer, [prompts[i] for i in rows], cfg.max_new_tokens, cfg.temperature, sampler)
    scored = reward_fn(texts, batch_answers, lengths, rows)
    rewards = [r for r, _ in scored]
    log.add(step, texts, batch_answers)
    groups = [rewards[i : i + cfg.num_generations] for i in range(0, len(rewards), cfg.num_generations)]
    metrics = {
        "reward": sum(rewards) / len(rewards),
        "reward_exact": sum(p["exact"] for _, p in scored) / len(scored),
        "reward_format": sum(p["format"] for _, p in scored) / len(scored),
        "reward_model_score": sum(p.get("reward_model", 0.0) for _, p in scored) / len(scored),
        "mean_completion_length": sum(lengths) / len(lengths),
        "frac_reward_zero_std": sum(max(g) == min(g) for g in groups) / len(groups),
    }
    return ScoredBatch(sequences, attention_mask, completion_mask, rewards, metrics)


def train_reinforce_ema(model, tokenizer, prompts: list[str], answers: list[str], reward_fn, cfg, log, on_step,
                        start_adapter_dir=None, checkpoints=None, sampler=None) -> tuple[list[dict], int]:
    """The training loop: each step samples num_generations completions for
    prompts_per_step prompts (cycling through them), scores them and updates.

    reward_fn(completions, answers, n_tokens, prompt_indices) -> [(reward, parts)] for a
    batch (batched so a reward-model term scores it in one pass); log: a CompletionLog;
    on_step(step, metrics) receives the per-step metrics for plots and MLflow.
    Constant learning rate and no weight decay, as the TRL algorithms are configured.
    checkpoints (posttrain/resume.py): saves a resumable checkpoint every
    checkpoints.every_steps steps and resumes from the newest one of this run.
    sampler: a posttrain.rl.VllmSampler on this model (synced before every step's
    sampling), or None to sample with transformers' generate().
    Returns the per-step history (rounded metrics) and the step it resumed from (0: fresh).
    """
    import torch

    if cfg.beta:
        model.load_adapter(start_adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=cfg.learning_rate, weight_decay=0.0)
    baseline = EmaBaseline(beta=cfg.ema_beta)
    history: list[dict] = []
    first_step, state = resume_state(checkpoints, trainable, optimizer, log)
    if state:
        baseline.value = state["baseline"]
        history = state["history"]
    for step in range(first_step, cfg.steps):
        batch = sample_and_score(model, tokenizer, prompts, answers, reward_fn, cfg, log, step, sampler)
        stats = reinforce_step(model, optimizer, batch.sequences, batch.attention_mask, batch.completion_mask,
                               batch.rewards, baseline, kl_coef=cfg.beta, max_grad_norm=cfg.max_grad_norm,
                               temperature=cfg.temperature)
        metrics = {**batch.metrics, "kl": stats["kl"], "loss": stats["loss"], "baseline": stats["baseline"]}
        end_step(step, metrics, history, on_step, cfg.steps, checkpoints, trainable, optimizer, log,
                 {"baseline": baseline.value})
    return history, first_step


CHECKPOINT_FILE = "reinforce_ema.pt"


def end_step(step: int, metrics: dict, history: list[dict], on_step, steps: int, checkpoints, trainable: dict,
             optimizer, log, extra_state: dict, filename: str = CHECKPOINT_FILE) -> None:
    """After step `step` (0-based): its metrics to on_step (which may add to them, e.g. a
    held-out figure) and into the history, and every checkpoints.every_steps steps (not
    after the last) a resumable checkpoint holding the trainable weights, optimizer,
    history, completion log, torch's RNG and extra_state."""
    import torch

    on_step(step + 1, metrics)
    history.append({"step": step + 1, **{k: round(v, 5) for k, v in metrics.items()}})
    if checkpoints and checkpoints.every_steps and (step + 1) % checkpoints.every_steps == 0 and step + 1 < steps:
        save_checkpoint(checkpoints, step + 1, {
            "trainable": {name: p.detach().clone() for name, p in trainable.items()},
            "optimizer": optimizer.state_dict(), "history": history, "log": log.state_dict(),
            "torch_rng": torch.get_rng_state(), **extra_state}, filename)


def resume_state(checkpoints, trainable: dict, optimizer, log, filename: str = CHECKPOINT_FILE) -> tuple[int, dict]:
    """(step, state) of this run's newest resumable checkpoint, with the trainable weights,
    the optimizer, the completion log and torch's RNG already restored from it; (0, {})
    when there is none. The caller restores the rest of `state` (baseline, history, ...)."""
    import torch

    latest = checkpoints.latest() if checkpoints else None
    if not latest:
        return 0, {}
    step, path = latest
    state = torch.load(path / filename, weights_only=False)
    with torch.no_grad():
        for name, value in state["trainable"].items():
            trainable[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    log.load_state_dict(state["log"])
    torch.set_rng_state(state["torch_rng"])
    print(f"{checkpoints.stage}: resuming from step {step} ({path}): an earlier run with the same key stopped there",
          flush=True)
    return step, state


def save_checkpoint(checkpoints, step: int, state: dict, filename: str = CHECKPOINT_FILE) -> None:
    """checkpoint-<step>/ written whole (a temporary directory renamed), then older ones removed."""
    import json
    import os
    import shutil

    import torch

    from posttrain.resume import LEDGER

    final = checkpoints.directory / f"checkpoint-{step}"
    tmp = checkpoints.directory / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / filename)
    (tmp / LEDGER).write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for older_step, path in checkpoints.complete()[:-1]:
        shutil.rmtree(path, ignore_errors=True)
