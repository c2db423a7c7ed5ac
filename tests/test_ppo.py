"""PPO with a value model (posttrain/ppo.py): GAE, the KL-penalised rewards and the
clipped losses against hand-computed cases, and the whole update on a toy task where
the right action must be learned, the value loss must fall, and a strong KL penalty
must hold the policy near its reference."""

import pytest
import torch

from posttrain.ppo import (PpoConfig, gae, make_rollout, masked_whiten, per_token_rewards, policy_loss, ppo_update,
                           value_head, value_loss)


def test_gae_with_lambda_one_is_future_reward_minus_value():
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.5]]), torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[0.5, 0.75, 0.5]]
    assert returns.tolist() == [[1.0, 1.0, 1.0]]


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.25, 0.5]]), torch.ones(1, 3)
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    assert advantages == pytest.approx(torch.tensor([[0.9 * 0.25 - 0.5, 0.9 * 0.5 - 0.25, 1.0 - 0.5]]))


def test_nothing_flows_back_across_the_end_of_a_completion():
    # The second row ends after two tokens; its padding carries junk that must not count.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 7.0]])
    values = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    assert returns[1, 2] == 0.0


def test_score_lands_on_the_last_completion_token_and_kl_on_every_token():
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -5.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.0], [-1.0, -3.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = per_token_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    assert rewards == pytest.approx(torch.tensor([[-0.1, 0.0, 1.0], [0.0, 2.0 - 0.2, 0.0]]))


def test_whitening_ignores_padding():
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    white = masked_whiten(x, mask)
    assert white[0, :2] == pytest.approx(torch.tensor([-1.0, 1.0]), abs=1e-4) and white[0, 2] == 0.0


def test_clipped_ratio_stops_the_gradient_only_where_it_would_push_further():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.5]])).requires_grad_()  # ratio 1.5, beyond 1 + 0.2
    loss, clip_fraction, _ = policy_loss(new, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0.0  # positive advantage, ratio already above 1 + eps: no further push
    assert new.grad[0, 1] != 0.0  # negative advantage: the unclipped term still pulls the ratio down
    assert clip_fraction == 0.5


def test_value_loss_is_clipped_around_the_rollout_values():
    old, returns = torch.zeros(1, 1), torch.full((1, 1), 10.0)
    values = torch.full((1, 1), 5.0, requires_grad=True)
    loss, _ = value_loss(values, old, returns, torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (10 - 0.2) ** 2)  # the pessimistic (clipped) error
    loss.backward()
    assert values.grad.item() == 0.0


def test_value_head_starts_at_zero():
    head = value_head(8)
    assert head(torch.randn(2, 3, 8)).abs().max().item() == 0.0


TARGET, STEPS, VOCAB = 3, 4, 5


def toy_run(kl_coef: float, iterations: int = 40, seed: int = 0):
    """A policy over 4-token sequences (a logit table per position) and a value per
    position; the score is the share of a completion's tokens equal to TARGET, with
    completions of 2 to 4 tokens. Returns P(TARGET) per position and the value loss of
    the first and last rollouts."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.zeros(STEPS, VOCAB, requires_grad=True)
    values = torch.zeros(STEPS, requires_grad=True)
    reference = logits.detach().clone()
    optimizer = torch.optim.Adam([logits, values], lr=0.05)
    cfg = PpoConfig(kl_coef=kl_coef, epochs=4, minibatches=2, lam=0.95)
    value_losses = []
    for _ in range(iterations):
        with torch.no_grad():
            tokens = torch.multinomial(torch.softmax(logits, -1), 64, replacement=True, generator=generator).T
            lengths = torch.randint(2, STEPS + 1, (64,), generator=generator)
            mask = (torch.arange(STEPS)[None, :] < lengths[:, None]).float()
            scores = ((tokens == TARGET).float() * mask).sum(1) / lengths
            logprobs = torch.log_softmax(logits, -1).gather(1, tokens.T).T
            ref_logprobs = torch.log_softmax(reference, -1).gather(1, tokens.T).T
            rollout = make_rollout(scores, logprobs, ref_logprobs, values.expand(64, STEPS), mask, cfg)
            value_losses.append(float(((rollout.values - rollout.returns) ** 2 * mask).sum() / mask.sum()))

        def evaluate(index):
            chosen = tokens[index]
            return torch.log_softmax(logits, -1).gather(1, chosen.T).T, values.expand(len(index), STEPS)

        ppo_update(evaluate, rollout, optimizer, [logits, values], cfg, generator)
    return torch.softmax(logits, -1)[:, TARGET].detach(), value_losses[0], value_losses[-1]


def test_ppo_learns_the_rewarded_action_and_its_value():
    p_target, first_value_loss, last_value_loss = toy_run(kl_coef=0.01)
    assert p_target.min() > 0.9, p_target
    assert last_value_loss < 0.25 * first_value_loss, (first_value_loss, last_value_loss)


def test_a_strong_kl_penalty_holds_the_policy_near_its_reference():
    p_target, _, _ = toy_run(kl_coef=5.0)
    assert p_target.max() < 0.35, p_target  # the reference gives 0.2
