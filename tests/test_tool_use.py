"""Calculator tool use (posttrain/tool_use.py) and stage tool_sft on the tiny model."""

import csv
import json
import shutil
from dataclasses import dataclass

import pytest

from posttrain.config import PromptParams
from posttrain.gsm import grade
from posttrain.io import read_jsonl
from posttrain.tool_use import (DEFAULT_SYSTEM, ToolError, calculate, call_message, parse_call, render_tool_prompts,
                                run_call, solve_with_tool, tool_chat_template, tool_conversation, tool_grpo_trainer,
                                tool_schemas, tool_use_summary)

from conftest import FAST, run_stage

PROMPT = PromptParams()
RECORD = {"id": "p1", "question": "Ben buys 3 packs of 7 cupcakes and splits them into 3 boxes. How many in one box?",
          "answer": "7", "solution": "Ben starts with 3 * 7 = 21 cupcakes.\nOne of 3 equal parts is 21 / 3 = 7 "
                                     "cupcakes.\n#### 7"}


def call_text(expression):
    """A call as the model writes it at the end of its turn (the Qwen2.5 / Hermes format)."""
    return '\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "' + expression + '"}}\n</tool_call>'


def response(result):
    """A tool's result as the template writes it back."""
    return f"<tool_response>\n{result}\n</tool_response>"


@pytest.mark.parametrize("expression, value", [
    ("3 * 7", "21"), ("21 / 3", "7"), ("7 / 2", "3.5"), ("-(3 + 4) * 2", "-14"), ("1,200 - 200", "1000"),
    ("10 / 3", "3.3333"), ("0.2 * 50", "10"), ("$5 * 3", "15")])
def test_calculator_evaluates_arithmetic_as_solutions_write_numbers(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, error", [
    ('__import__("os").system("ls")', "not an arithmetic expression"), ("2 ** 10", "not an arithmetic expression"),
    ("x + 1", "not an arithmetic expression"), ("1 / 0", "division by zero"), ("3 *", "not an arithmetic expression"),
    ("1 + " * 100 + "1", "longer than 200 characters"), ("1e200 * 1e200", "too large"), ("1e999", "too large")])
def test_calculator_refuses_anything_but_arithmetic(expression, error):
    with pytest.raises(ToolError, match=error):
        calculate(expression)


@pytest.mark.parametrize("text, error", [
    ("{not json", "not JSON"), ('["calculator"]', "not a JSON object"),
    ('{"name": "search", "arguments": {"expression": "1"}}', "unknown tool"),
    ('{"name": "calculator", "arguments": {"expr": "1"}}', "arguments must be"),
    ('{"name": "calculator", "arguments": "1 + 1"}', "arguments must be")])
def test_a_malformed_call_gets_an_error_naming_what_is_wrong(text, error):
    with pytest.raises(ToolError, match=error):
        run_call(parse_call(text))
    assert run_call(parse_call('{"name": "calculator", "arguments": {"expression": "6 * 7"}}')) == "42"


def test_solution_becomes_one_call_per_confirmed_step():
    messages, calls = tool_conversation(RECORD, PROMPT)
    assert calls == 2 and [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant",
                                                            "tool", "assistant"]
    assert messages[0]["content"] == DEFAULT_SYSTEM and RECORD["question"] in messages[1]["content"]
    # Each step is called before the sentence that states it: the first turn is the call
    # alone, and every turn after a result starts a sentence that copies the call.
    assert messages[2] == call_message("", ["3 * 7"])
    assert messages[3] == {"role": "tool", "name": "calculator", "content": "21"}
    assert messages[4] == call_message("Ben starts with 3 * 7 = 21 cupcakes.", ["21 / 3"])
    assert messages[6] == {"role": "assistant", "content": "One of 3 equal parts is 21 / 3 = 7 cupcakes.\n#### 7"}
    # The assistant's turns read back as the solution: nothing lost or added but the calls.
    text = " ".join(m["content"] for m in messages[2:] if m["role"] == "assistant")
    assert text.split() == RECORD["solution"].split()


def test_the_template_writes_the_schema_calls_and_results_and_trl_reads_the_calls_back(tiny_workspace):
    """What SFT trains on is what GRPO with tools=[calculator] parses: TRL's Qwen2.5 response
    template reads the rendered call back as the same structured call."""
    from trl.chat_template_utils import add_response_schema, parse_response

    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_workspace / "models/base")
    messages, _ = tool_conversation(RECORD, PROMPT)
    text = tokenizer.apply_chat_template(messages, tools=tool_schemas(), chat_template=tool_chat_template(tokenizer),
                                         tokenize=False)
    assert text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}\n\n# Tools") and json.dumps(tool_schemas()[0]) in text
    assert ("<|im_start|>assistant" + call_text("3 * 7") + "<|im_end|>\n<|im_start|>user\n"  # the call alone
            + response("21") + "<|im_end|>\n<|im_start|>assistant\nBen starts with 3 * 7 = 21 cupcakes."
            + call_text("21 / 3") + "<|im_end|>\n") in text
    assert text.endswith("<|im_start|>assistant\nOne of 3 equal parts is 21 / 3 = 7 cupcakes.\n#### 7<|im_end|>\n")

    tokenizer.chat_template = tool_chat_template(tokenizer)
    tokenizer = add_response_schema(tokenizer)
    prompt = render_tool_prompts(tokenizer, [messages[:2]])[0]
    turn = "Ben starts with 3 * 7 =" + call_text("3 * 7") + "<|im_end|>"
    parsed = parse_response(tokenizer, tokenizer(turn, add_special_tokens=False)["input_ids"],
                            prefix=tokenizer(prompt, add_special_tokens=False)["input_ids"], tools=tool_schemas())
    assert parsed["content"] == "Ben starts with 3 * 7 ="
    assert parsed["tool_calls"] == [call_message("", ["3 * 7"])["tool_calls"][0]]


def test_a_model_without_chatml_turns_stops_in_one_line(tiny_workspace):
    from posttrain.errors import UserError
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_workspace / "models/base")

    class Llama:  # a tokenizer whose vocabulary has no <|im_start|>
        def get_vocab(self):
            return {k: v for k, v in tokenizer.get_vocab().items() if k not in ("<|im_start|>", "<|im_end|>")}

    with pytest.raises(UserError, match="no ChatML"):
        tool_chat_template(Llama())


def test_a_step_the_calculator_does_not_confirm_stays_plain_text():
    record = {**RECORD, "solution": "Each gets 10 / 3 = 3 cookies.\nThen 3 + 4 = 7.\n#### 7"}  # 10 / 3 is 3.3333
    messages, calls = tool_conversation(record, PROMPT)
    assert calls == 1
    assert messages[2] == call_message("Each gets 10 / 3 = 3 cookies.", ["3 + 4"])
    assert messages[4] == {"role": "assistant", "content": "Then 3 + 4 = 7.\n#### 7"}


def test_two_steps_of_one_sentence_are_called_one_after_the_other_before_it():
    record = {**RECORD, "solution": "He has 2 + 3 = 5 and then 5 * 4 = 20 apples.\n#### 20"}
    messages, calls = tool_conversation(record, PROMPT)
    assert calls == 2
    assert messages[2] == call_message("", ["2 + 3"]) and messages[4] == call_message("", ["5 * 4"])
    assert messages[6] == {"role": "assistant", "content": record["solution"]}


def test_gsm8k_calculator_annotations_become_calls():
    record = {**RECORD, "solution": "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe earned <<12*50=600>>600 dollars."
                                    "\nWeng earns 12/60 = $<<12/60=0.2>>0.2 a minute.\n#### 72"}
    messages, calls = tool_conversation(record, PROMPT)
    assert calls == 3
    assert [m["tool_calls"][0]["function"]["arguments"]["expression"]
            for m in messages if m.get("tool_calls")] == ["48/2", "12*50", "12/60"]
    assert "<<" not in "".join(m["content"] for m in messages)


def test_steps_with_thousands_commas_are_read_whole():
    """posttrain.equations.EQUATION reads the steps for both the tool and the arithmetic reward:
    "1,200 + 5 = 1,205" is one step, not "200 + 5 = 1"."""
    record = {**RECORD, "solution": "They have 1,200 + 5 = 1,205 tickets.\nThen 1,205 * 2 = 2,410 tickets.\n#### 2410"}
    messages, calls = tool_conversation(record, PROMPT)
    assert calls == 2
    assert [m["tool_calls"][0]["function"]["arguments"]["expression"]
            for m in messages if m.get("tool_calls")] == ["1,200 + 5", "1,205 * 2"]


def test_steps_in_dollars_become_calls():
    """GSM8K writes money steps as "$5 * 3 = $15": the tool reads the "$" (before the shared
    evaluator, it refused such a step, which then stayed plain text)."""
    record = {**RECORD, "solution": "He pays $5 * 3 = $15 for the pens.\nThen $15 + $2 = $17 in all.\n#### 17"}
    messages, calls = tool_conversation(record, PROMPT)
    assert calls == 2
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["15", "17"]


def test_tool_results_are_masked_out_of_the_loss_and_calls_are_trained_on(tiny_workspace):
    """Through TRL's own SFT data path, as continue_sft builds it (the template's training
    variant, the tools as a JSON string): labels are -100 on the tool's turns, the schema
    and the prompt, and set on the assistant's text, calls and answer."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_causal_lm, load_tokenizer

    base = tiny_workspace / "models/base"
    tokenizer = load_tokenizer(base, padding_side="right")
    tokenizer.chat_template = tool_chat_template(tokenizer, training=True)
    messages, _ = tool_conversation(RECORD, PROMPT)
    trainer = SFTTrainer(model=load_causal_lm(base), processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": messages, "tools": json.dumps(tool_schemas())}]),
                         args=SFTConfig(output_dir=str(tiny_workspace / "unused"), assistant_only_loss=True,
                                        max_length=1024, report_to=[], use_cpu=True))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    trained = tokenizer.decode(ids[labels != -100])
    ignored = tokenizer.decode(ids[labels == -100])
    assert "tool_response" not in trained and "# Tools" not in trained
    assert response("21") in ignored and response("7") in ignored  # both results, unlearned
    assert "# Tools" in ignored and RECORD["question"][:40] in ignored
    for expression in ("3 * 7", "21 / 3"):
        assert call_text(expression) in trained  # the calls are learned
    assert "#### 7" in trained and RECORD["question"][:40] not in trained


@dataclass
class Out:
    completions: list
    seconds: float = 0.5


class ScriptedEngine:
    """Answers by the last turn of each prompt: a scripted model of what to call."""

    def __init__(self, script):
        self.script, self.prompts = script, []

    def generate(self, prompts, max_new_tokens, desc=""):
        self.prompts.append(prompts)
        return Out([self.script(prompt) for prompt in prompts])


def test_the_tool_loop_feeds_results_back_counts_calls_and_cuts_off_endless_calling(tiny_workspace):
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_workspace / "models/base")

    def script(prompt):
        if "Q-right" in prompt:  # calls, gets 21 back, answers with it
            return "The answer is 7.\n#### 7" if response("21") in prompt else "3 * 7 =" + call_text("3 * 7")
        if "Q-bad" in prompt:  # a malformed call, then an answer without the tool
            return "#### 5" if '"error"' in prompt else "<tool_call>\n{oops}\n</tool_call>"
        if "Q-loop" in prompt:  # never stops calling
            return "again" + call_text("1 + 1")
        return "#### 3"  # never calls

    engine = ScriptedEngine(script)
    transcripts, seconds = solve_with_tool(engine, tokenizer, ["Q-right", "Q-bad", "Q-loop", "Q-none"], PROMPT,
                                           max_calls=3, max_new_tokens=16)
    right, bad, loop, none = transcripts
    assert (right.calls, right.valid_calls, right.finished) == (1, 1, True)
    assert grade(right.text, "7").strict_correct and " 21 " in right.text
    assert (bad.calls, bad.valid_calls, bad.finished) == (1, 0, True) and "not JSON" in bad.errors[0]
    assert (loop.calls, loop.valid_calls, loop.finished) == (4, 4, False)  # cut off after max_calls + 1 turns
    assert (none.calls, none.finished) == (0, True)
    # One engine call per turn, with only the open conversations: all 4; then the three that
    # called; then the one that keeps calling, until its calls run out.
    assert [len(p) for p in engine.prompts] == [4, 3, 1, 1] and seconds == 2.0
    # The next prompt is the conversation so far in the tool template: the model's own turn,
    # as it wrote it, then the result, then the assistant's next turn.
    first_turn = [{"role": "system", "content": DEFAULT_SYSTEM},
                  {"role": "user", "content": PROMPT.instruction.format(question="Q-right")}]
    assert engine.prompts[0][0] == render_tool_prompts(tokenizer, [first_turn])[0]
    assert engine.prompts[1][0] == render_tool_prompts(tokenizer, [first_turn + [
        call_message("3 * 7 =", ["3 * 7"]), {"role": "tool", "name": "calculator", "content": "21"}]])[0]
    assert engine.prompts[1][0] == engine.prompts[0][0] + "3 * 7 =" + call_text("3 * 7") + "<|im_end|>\n" + \
        "<|im_start|>user\n" + response("21") + "<|im_end|>\n<|im_start|>assistant\n"
    summary = tool_use_summary(transcripts, [True, True, False, False])
    assert summary["calls_per_problem"] == 1.5 and summary["tool_call_validity"] == round(5 / 6, 4)
    assert summary["problems_with_calls"] == 0.75 and summary["finished"] == 0.75
    assert summary["strict_accuracy"]["value"] == 0.5 and summary["strict_accuracy"]["n"] == 4


def test_tool_sft_stage_trains_and_solves_the_test_three_ways(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    run_stage(root, "tool_sft", overrides={"tool_sft": {**FAST, "enabled": True, "num_examples": 8,
                                                        "eval_problems": 4, "max_calls": 2, "max_new_tokens": 12,
                                                        "max_steps": 3, "max_length": 1024}})
    metrics = json.loads((root / "metrics/tool_sft.json").read_text())
    # (the tiny model's tokenizer spends many tokens on the calls' JSON: a long max_length)
    assert metrics["steps"] == 3 and metrics["examples"] == 8 and metrics["skipped_too_long"] == 0
    assert metrics["calls_per_example"] > 0
    from safetensors.torch import load_file

    before = load_file(root / "models/sft/adapter_model.safetensors")
    after = load_file(root / "models/tool_sft/adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)
    graded = read_jsonl(root / "data/tool_sft/graded.jsonl")
    assert len(graded) == 4
    for way in ("with_tool", "without_tool", "start_without_tool"):
        assert metrics[way]["strict_accuracy"]["n"] == 4
    for way in ("with_tool", "without_tool"):
        paired = metrics[way]["vs_start_without_tool"]
        assert paired["n"] == 4 and 0 <= paired["p_value"] <= 1
    assert metrics["with_tool"]["calls_per_problem"] == sum(g["calls"] for g in graded) / 4
    with open(root / "metrics/tool_sft/loss.csv") as f:
        assert len(f.read().splitlines()) == 1 + 3


def test_grpo_runs_the_models_calls_masks_the_results_and_learns_from_the_answers(sft_workspace, tmp_path):
    """The tool_rl trainer on the tiny model, its sampler scripted (the tiny model never
    writes a call): each first turn calls the calculator, each second answers, right in
    half the completions. TRL must parse the calls, run our calculator and feed the result
    back; the loss must leave the results out and keep the calls and answers; the reward
    must grade the whole conversation; and the adapter must move."""
    from peft import PeftModel

    from posttrain.config import ToolRlParams
    from posttrain.models import load_tokenizer
    from posttrain.training import load_base_for_training

    base = sft_workspace / "models/base"
    tokenizer = load_tokenizer(base)
    policy = PeftModel.from_pretrained(load_base_for_training(base, "none"), sft_workspace / "models/sft",
                                       is_trainable=True)
    before = {k: v.detach().clone() for k, v in policy.named_parameters() if v.requires_grad}
    cfg = ToolRlParams(enabled=True, prompts_per_step=2, num_generations=2, max_completion_length=512, max_calls=2)
    records = [{"question": "Ben has 3 bags of 7 apples. How many apples?", "answer": "21"}] * 2
    trainer = tool_grpo_trainer(policy, tokenizer, records, PROMPT, cfg, dict(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_steps=1, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", seed=0))

    turns = []

    def scripted_sampler(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        replies = []
        for k, ids in enumerate(prompt_ids):
            prompt = tokenizer.decode(ids)
            turns.append(prompt)
            if response("21") in prompt:  # the calculator's result came back: answer, right or wrong
                reply = "So 21 apples.\n#### 21" if k % 2 == 0 else "So 20 apples.\n#### 20"
            else:
                reply = "Ben has 3 * 7 =" + call_text("3 * 7")
            replies.append(tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"])
        return replies, None

    trainer._generate_single_turn = scripted_sampler
    seen = []
    compute_loss = trainer.compute_loss

    def recording_loss(model, inputs, *args, **kwargs):
        seen.append({k: inputs[k] for k in ("completion_ids", "completion_mask", "tool_mask") if k in inputs})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording_loss
    trainer.train()

    first_turns = [t for t in turns if "<tool_response>" not in t]
    assert first_turns and all(json.dumps(tool_schemas()[0]) in t for t in first_turns)  # the tool was offered
    assert sum(response("21") in t for t in turns) == 4  # every completion's call ran; its result came back
    log = next(e for e in trainer.state.log_history if "reward" in e)
    assert log["tools/call_frequency"] == 1.0 and log["tools/failure_frequency"] == 0.0
    assert log["rewards/exact/mean"] == 0.5 and log["rewards/format/mean"] == 1.0
    batch = seen[0]
    assert "tool_mask" in batch
    for ids, completion_mask, tool_mask in zip(batch["completion_ids"], batch["completion_mask"], batch["tool_mask"]):
        kept = ids[(completion_mask * tool_mask).bool()]
        left_out = ids[completion_mask.bool() & ~tool_mask.bool()]
        assert "<tool_response>" in tokenizer.decode(left_out) and "21" in tokenizer.decode(left_out)
        assert "<tool_response>" not in tokenizer.decode(kept)
        assert call_text("3 * 7") in tokenizer.decode(kept) and "####" in tokenizer.decode(kept)
    after = dict(policy.named_parameters())
    assert any(not before[k].equal(after[k]) for k in before), "GRPO did not change the adapter"


def test_tool_rl_stage_trains_and_solves_the_test_with_the_tool_by_it_and_its_start(sft_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(sft_workspace, root)
    run_stage(root, "tool_rl", overrides={"tool_rl": {"enabled": True, "start": "sft", "num_prompts": 4, "steps": 2,
                                                      "prompts_per_step": 2, "num_generations": 2,
                                                      "max_completion_length": 16, "max_calls": 2,
                                                      "eval_problems": 4, "max_new_tokens": 12}})
    metrics = json.loads((root / "metrics/tool_rl.json").read_text())
    assert metrics["steps"] == 2 and metrics["start"] == "sft" and metrics["resumed_from_step"] == 0
    with open(root / "metrics/tool_rl/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["1", "2"]
    assert {"reward", "calls_per_completion", "call_failure_rate", "completion_length"} <= set(rows[0])
    assert (root / "models/tool_rl/adapter_model.safetensors").exists()
    graded = read_jsonl(root / "data/tool_rl/graded.jsonl")
    assert len(graded) == 4
    for way in ("with_tool", "start_with_tool"):
        assert metrics[way]["strict_accuracy"]["n"] == 4
    paired = metrics["with_tool"]["vs_start_with_tool"]
    assert paired["n"] == 4 and 0 <= paired["p_value"] <= 1
    assert metrics["with_tool"]["calls_per_problem"] == sum(g["tool_rl_calls"] for g in graded) / 4
