"""PPO with a learned value model, for language-model policies: the pieces TRL 1.16 no
longer ships (it dropped its PPOTrainer), written to the published recipe.

RLHF PPO per token (Ziegler et al. 2019; Stiennon et al. 2020; Huang et al. 2024, "The
N implementation details of RLHF with PPO"):
- reward: each completion token gets -kl_coef * (log pi - log pi_ref), a KL penalty to
  the reference policy, and the last one also gets the sequence's score;
- advantage: generalised advantage estimation, GAE(gamma, lambda), from a value model's
  per-token estimates, whitened over the batch's completion tokens;
- policy loss: the clipped surrogate, -min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi/pi_old;
- value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- eps_v) - R)^2) against the GAE returns.

Tensors are [batch, completion tokens] with a mask that is 1 on completion tokens and 0
on the right padding after each completion ends. The functions know nothing of models or
tokenizers: a caller computes log-probs and values and hands them in (ppo_update takes a
callable for that), so the same code trains a toy policy in the tests and a causal LM
with a value head.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PpoConfig:
    clip: float = 0.2          # policy ratio clipping, eps
    value_clip: float = 0.2    # value clipping around the rollout's values, eps_v
    value_coef: float = 0.5    # weight of the value loss in the total loss
    kl_coef: float = 0.05      # per-token KL penalty to the reference policy
    gamma: float = 1.0         # discount (1: the score counts fully at every token)
    lam: float = 0.95          # GAE lambda
    epochs: int = 1            # passes over each rollout (params.yaml rl.ppo.epochs)
    minibatches: int = 1       # minibatches per pass
    max_grad_norm: float = 1.0


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x, mask, eps: float = 1e-8):
    """x standardised over the masked positions (mean 0, unit variance); 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * (var + eps).rsqrt() * mask


def per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """[B, T] rewards: -kl_coef * (log pi - log pi_ref) on every completion token, plus the
    sequence score on its last one. Returns (rewards, kl per token)."""
    import torch

    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & mask.bool()  # the last completion token
    rewards = rewards + torch.where(last, scores[:, None].to(rewards.dtype), torch.zeros_like(rewards))
    return rewards * mask, kl


def gae(rewards, values, mask, gamma: float, lam: float):
    """Advantages and returns by GAE over [B, T]; positions past a completion's end (mask
    0) count as terminal: value 0, reward 0, so nothing flows back across them."""
    import torch

    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float):
    """Clipped surrogate over completion tokens; also the share of clipped tokens and an
    estimate of KL(old || new) for monitoring."""
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, clip: float):
    """Clipped value loss: the rollout's values bound how far one update moves them."""
    import torch

    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    clip_fraction = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), mask)
    return loss, clip_fraction.detach()


@dataclass
class Rollout:
    """One batch of sampled completions and what the update needs about them, [B, T]."""

    logprobs: object      # log pi_old of the sampled tokens
    values: object        # V_old per token
    advantages: object    # whitened GAE advantages
    returns: object       # GAE returns (value targets)
    mask: object
    kl: object            # log pi_old - log pi_ref per token (monitoring)


def make_rollout(scores, logprobs, ref_logprobs, values, mask, cfg: PpoConfig) -> Rollout:
    """Rewards with the KL penalty, GAE and whitening for one batch of samples (no grad)."""
    import torch

    with torch.no_grad():
        rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, cfg.kl_coef)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
    return Rollout(logprobs.detach(), (values * mask).detach(), advantages, returns, mask, kl)


def ppo_update(evaluate, rollout: Rollout, optimizer, parameters, cfg: PpoConfig, generator=None) -> dict:
    """cfg.epochs passes of cfg.minibatches minibatches over one rollout.

    evaluate(indices) -> (logprobs, values) of the rollout's rows `indices` under the
    current policy and value model, with gradients. Returns the last pass's means."""
    import torch

    rows = rollout.mask.shape[0]
    size = max(1, rows // cfg.minibatches)
    stats: dict[str, list[float]] = {}
    for _ in range(cfg.epochs):
        order = torch.randperm(rows, generator=generator)
        stats = {}
        for start in range(0, rows, size):
            index = order[start : start + size]
            mask = rollout.mask[index]
            logprobs, values = evaluate(index)
            p_loss, p_clip, approx_kl = policy_loss(logprobs, rollout.logprobs[index], rollout.advantages[index],
                                                    mask, cfg.clip)
            v_loss, v_clip = value_loss(values, rollout.values[index], rollout.returns[index], mask, cfg.value_clip)
            loss = p_loss + cfg.value_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, cfg.max_grad_norm)
            optimizer.step()
            for key, value in (("policy_loss", p_loss), ("value_loss", v_loss), ("policy_clip_fraction", p_clip),
                               ("value_clip_fraction", v_clip), ("approx_kl", approx_kl)):
                stats.setdefault(key, []).append(float(value.detach()))
    summary = {key: sum(values) / len(values) for key, values in stats.items()}
    summary["kl_to_reference"] = float(masked_mean(rollout.kl, rollout.mask))
    return summary


def value_head(hidden_size: int):
    """A scalar value per token from a causal LM's last hidden states (the policy's own
    backbone, so the value model costs one linear layer), starting at V = 0: no made-up
    baseline at the first step."""
    import torch

    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


PPO_CHECKPOINT_FILE = "ppo.pt"


def train_ppo(model, tokenizer, prompts: list[str], answers: list[str], reward_fn, cfg, log, on_step,
              start_adapter_dir=None, checkpoints=None, sampler=None) -> tuple[list[dict], int]:
    """rl.algorithm ppo on a causal LM with a LoRA adapter: the loop of
    posttrain/reinforce.py's train_reinforce_ema (same sampling, rewards, logging,
    checkpoints and vLLM sampler), with PPO's update instead of REINFORCE's.

    Each step samples num_generations completions for prompts_per_step prompts, scores
    them (reward_fn, as for reinforce_ema), and then, with no gradient, takes the
    sampling policy's log-probs, the reference's (the start adapter, frozen, when
    rl.beta > 0: the per-token KL penalty; without it there is no penalty) and the value
    head's estimates on the policy's last hidden states; make_rollout turns them into
    GAE advantages and returns, and ppo_update runs rl.ppo.epochs passes of clipped
    updates of the adapter and the value head together. The value head is a linear layer
    on the policy's own backbone (value_head): the critic costs no second model. Only the
    policy adapter is the stage's output; the head lives in the resumable checkpoints.
    Returns the per-step history and the step it resumed from (0: fresh)."""
    import torch

    from posttrain.reinforce import (REFERENCE_ADAPTER, completion_logprobs, end_step, resume_state, sample_and_score,
                                     token_logprobs)

    settings = PpoConfig(clip=cfg.epsilon, value_clip=cfg.ppo.value_clip, value_coef=cfg.ppo.value_coef,
                         kl_coef=cfg.beta, gamma=cfg.ppo.gamma, lam=cfg.ppo.lam, epochs=cfg.ppo.epochs,
                         minibatches=cfg.ppo.minibatches, max_grad_norm=cfg.max_grad_norm)
    if cfg.beta:
        model.load_adapter(start_adapter_dir, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    head = value_head(model.config.hidden_size)
    parameters = [*trainable.values(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=0.0)

    def policy_and_values(input_ids, attention_mask, completion_mask):
        """Per-token log-probs (sampling temperature) and values, [B, T-1], 0 off the completion."""
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = completion_mask[:, 1:]
        values = head(out.hidden_states[-1][:, :-1].float()).squeeze(-1) * mask
        return token_logprobs(out.logits, input_ids, completion_mask, cfg.temperature), values

    history: list[dict] = []
    first_step, state = resume_state(checkpoints, trainable, optimizer, log, PPO_CHECKPOINT_FILE)
    if state:
        head.load_state_dict(state["value_head"])
        history = state["history"]
    for step in range(first_step, cfg.steps):
        batch = sample_and_score(model, tokenizer, prompts, answers, reward_fn, cfg, log, step, sampler)
        sequences, attention_mask, completion_mask = batch.sequences, batch.attention_mask, batch.completion_mask
        # Eval mode throughout (gradients still flow in the update): LoRA dropout would make
        # the log-probs those of a perturbed policy, not of the one that sampled.
        model.eval()
        with torch.no_grad():
            old_logprobs, old_values = policy_and_values(sequences, attention_mask, completion_mask)
            ref_logprobs = old_logprobs
            if cfg.beta:
                model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
                ref_logprobs = completion_logprobs(model, sequences, attention_mask, completion_mask, cfg.temperature)
                model.set_adapter("default")
        mask = completion_mask[:, 1:].to(old_logprobs.dtype)
        rollout = make_rollout(torch.tensor(batch.rewards, dtype=old_logprobs.dtype), old_logprobs, ref_logprobs,
                               old_values, mask, settings)
        stats = ppo_update(lambda rows: policy_and_values(sequences[rows], attention_mask[rows], completion_mask[rows]),
                           rollout, optimizer, parameters, settings)
        metrics = {**batch.metrics, "kl": stats["kl_to_reference"], "loss": stats["policy_loss"],
                   **{key: stats[key] for key in ("value_loss", "policy_clip_fraction", "value_clip_fraction",
                                                  "approx_kl")}}
        end_step(step, metrics, history, on_step, cfg.steps, checkpoints, trainable, optimizer, log,
                 {"value_head": head.state_dict()}, PPO_CHECKPOINT_FILE)
    return history, first_step
