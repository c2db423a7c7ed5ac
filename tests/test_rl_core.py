"""The RL reward and REINFORCE with an EMA baseline, without the pipeline."""

import pytest
import torch

from posttrain.reinforce import EmaBaseline, completion_logprobs, reinforce_loss, reinforce_step
from posttrain.rewards import RewardWeights, reward_parts, total_reward

W = RewardWeights(exact=1.0, format=0.1)


@pytest.mark.parametrize(
    ("completion", "exact", "fmt", "arithmetic", "reward"),
    [
        ("7 + 5 = 12\n#### 12", 1.0, 1.0, 1.0, 1.1),  # right and formatted
        ("#### $12.00", 1.0, 1.0, 0.0, 1.1),  # same number, other spelling
        ("7 + 5 = 13\n#### 13", 0.0, 1.0, 0.0, 0.1),  # formatted but wrong: the small bonus only
        ("7 + 6 = 13\n#### 13", 0.0, 1.0, 1.0, 0.1),  # true step, wrong answer: arithmetic off by default
        ("The answer is 12.", 0.0, 0.0, 0.0, 0.0),  # right number, no answer line: strict gives nothing
        ("", 0.0, 0.0, 0.0, 0.0),
        ("#### 12\n#### 13", 1.0, 1.0, 0.0, 1.1),  # the first answer line counts
    ],
)
def test_reward_table(completion, exact, fmt, arithmetic, reward):
    parts = reward_parts(completion, "12")
    assert parts == {"exact": exact, "format": fmt, "arithmetic": arithmetic}
    assert total_reward(parts, W) == pytest.approx(reward)


def test_arithmetic_reward_pays_true_steps_only_when_weighted_and_never_a_right_answer_s_worth():
    from posttrain.config import RewardWeightParams

    weights = RewardWeights(exact=1.0, format=0.1, arithmetic=0.5)
    true_steps_wrong_answer = reward_parts("7 + 6 = 13\n#### 13", "12")
    false_step = reward_parts("7 + 6 = 14\n#### 14", "12")
    assert total_reward(true_steps_wrong_answer, weights) == pytest.approx(0.6)
    assert total_reward(false_step, weights) == pytest.approx(0.1)
    assert total_reward(reward_parts("7 + 5 = 12\n#### 12", "12"), weights) == pytest.approx(1.6)
    with pytest.raises(ValueError, match="arithmetic"):
        RewardWeightParams(exact=1.0, format=0.1, arithmetic=0.9)


def test_right_answers_always_beat_formatting_alone():
    right = {"exact": 1.0, "format": 1.0, "arithmetic": 0.0}
    assert total_reward(right, W) > total_reward({**right, "exact": 0.0}, W) * 5


def test_optional_terms_only_when_weighted():
    parts = {"exact": 1.0, "format": 1.0, "arithmetic": 1.0}
    with_rm = RewardWeights(reward_model=0.5)
    assert total_reward(parts, with_rm, reward_model_score=2.0) == pytest.approx(1.1 + 1.0)
    with pytest.raises(ValueError, match="reward_model"):
        total_reward(parts, with_rm)
    with_length = RewardWeights(length=0.2)
    assert total_reward(parts, with_length, length_fraction=0.5) == pytest.approx(1.0)
    assert total_reward(parts, with_length, length_fraction=3.0) == pytest.approx(0.9)  # clipped at 1


def test_ema_baseline_recurrence_and_no_self_dependence():
    baseline = EmaBaseline(beta=0.9, value=0.0)
    rewards = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    expected = 0.0
    for batch in rewards:
        # advantages use the baseline from before this batch
        assert baseline.advantages(batch) == pytest.approx([r - expected for r in batch])
        expected = 0.9 * expected + 0.1 * sum(batch) / len(batch)
        assert baseline.update(batch) == pytest.approx(expected)
    assert expected == pytest.approx(0.9 * (0.9 * 0.05 + 0.1) + 0.0)


def test_reinforce_loss_is_minus_advantage_times_sequence_logprob():
    token_logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, kl = reinforce_loss(token_logprobs, advantages)
    assert loss.item() == pytest.approx(-((1.0 * -3.0) + (-2.0 * -0.5)) / 2)
    assert kl.item() == 0.0


def tiny_lm(vocab=8):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0))


def test_completion_logprobs_cover_completion_tokens_only():
    model = tiny_lm()
    input_ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1]])
    logprobs = completion_logprobs(model, input_ids, torch.ones_like(input_ids), mask)
    assert logprobs.shape == (1, 3)
    assert logprobs[0, 0] == 0 and (logprobs[0, 1:] < 0).all()


def test_reinforce_ema_raises_the_probability_of_the_rewarded_token():
    """Toy task: after prompt token 1, answer with one token; only token 5 is rewarded."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_lm(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    prompt = torch.tensor([[1]])

    def p_target():
        with torch.no_grad():
            return torch.softmax(model(input_ids=prompt).logits[0, -1], -1)[5].item()

    before = p_target()
    baseline = EmaBaseline(beta=0.8)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=prompt).logits[0, -1], -1)
        tokens = torch.multinomial(probs, 32, replacement=True, generator=generator)
        input_ids = torch.cat([prompt.repeat(32, 1), tokens[:, None]], dim=1)
        completion_mask = torch.tensor([[0, 1]]).repeat(32, 1)
        rewards = [float(t == 5) for t in tokens.tolist()]
        stats = reinforce_step(model, optimizer, input_ids, torch.ones_like(input_ids), completion_mask, rewards,
                               baseline)
    after = p_target()
    assert before < 0.3
    assert after > 0.8, (before, after)
    assert 0 < stats["baseline"] < 1  # the baseline tracked the rising mean reward
    # LoRA only: the base weights never moved
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_trl_reward_functions_sum_to_total_reward():
    """TRL adds w_i * f_i over the functions: that sum is posttrain.rewards.total_reward."""
    from posttrain.rl import CompletionLog, trl_reward_functions

    weights = RewardWeights(exact=1.0, format=0.1, arithmetic=0.3)
    functions, function_weights = trl_reward_functions(weights, CompletionLog(), 128, training=lambda: False)
    assert [f.__name__ for f in functions] == ["exact", "format", "arithmetic"]
    completions = [[{"role": "assistant", "content": text}] for text in
                   ["7 + 5 = 12\n#### 12", "7 + 6 = 13\n#### 13", "7 + 6 = 14\n#### 14", "no answer"]]
    answers = ["12"] * len(completions)
    summed = [sum(w * value for w, value in zip(function_weights, values)) for values in
              zip(*(f(completions=completions, answer=answers, trainer_state=None) for f in functions))]
    expected = [total_reward(reward_parts(c[0]["content"], a), weights) for c, a in zip(completions, answers)]
    assert summed == pytest.approx(expected)
    assert summed == pytest.approx([1.4, 0.4, 0.1, 0.0])
    plain, _ = trl_reward_functions(RewardWeights(), CompletionLog(), 128, training=lambda: False)
    assert [f.__name__ for f in plain] == ["exact", "format"]  # off: not computed, not logged
