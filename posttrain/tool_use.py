"""Calculator tool use on GSM problems (stage tool_sft): the tool, solutions rewritten
as tool-calling conversations, and solving with the tool in the loop.

Conversations are written the way transformers' chat templates and TRL's GRPO `tools=`
support write them: an assistant message with `tool_calls`, then a `tool` message with the
result. They are rendered with TRL's Qwen2.5 template (the ChatML turns of SmolLM2, Qwen
and the test model, plus tools), which lists the tool's JSON schema in the system turn,
writes a call as

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "3 * 7"}}
    </tool_call><|im_end|>

and its result as a user turn `<tool_response>\n21\n</tool_response>`. TRL parses that
format back into tool calls (its response template for the Qwen family), so what SFT
teaches here is what GRPO with `tools=[calculator]` reads. SFT uses the template's
training variant, whose `{% generation %}` markers put the loss on the assistant turns
(the calls included) and none on the tool's results.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from posttrain.config import PromptParams
from posttrain.errors import UserError
from posttrain.equations import EQUATION, ExpressionError, evaluate, number

TOOL_NAME = "calculator"
# The system turn when params prompt.system is null: the template would otherwise write Qwen's own.
DEFAULT_SYSTEM = "You are a helpful assistant."
CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
# A step of a written solution is an equation as posttrain.equations reads one ("3 * 7 = 21");
# GSM8K's calculator annotation "<<3*7=21>>" is rewritten as the plain step first.
ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
SENTENCE_END = re.compile(r"[.!?:](?=\s)\s*|\n\s*")  # a step's sentence starts after one
MAX_EXPRESSION = 200  # characters: arithmetic, not a program


class ToolError(ValueError):
    """A call the tool cannot run: its message goes back to the model as the result."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * /, unary minus, parentheses;
    "$" and thousands commas are read as the solutions write them, so GSM8K's "$5 * 3" is
    a step), computed exactly (posttrain.equations.evaluate) and written as the solutions
    write numbers: an integer without a decimal point, else at most 4 decimals. Anything
    else (names, calls, powers, a result past a float's range) is a ToolError."""
    if len(expression) > MAX_EXPRESSION:
        raise ToolError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        return format_number(float(evaluate(expression)))
    except ExpressionError as error:
        raise ToolError(str(error)) from error
    except OverflowError as error:  # past a float's range ("1e200 * 1e200"): an answer, not a crash of the loop
        raise ToolError("result too large") from error


def format_number(value: float) -> str:
    rounded = round(value, 4)
    return str(int(rounded)) if rounded == int(rounded) else f"{rounded:g}"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / and parentheses.

    Args:
        expression: The expression, for example "3 * 7".
    """
    return calculate(expression)


def tool_schemas() -> list[dict]:
    """The calculator's JSON schema as chat templates and TRL write it (from its signature and docstring)."""
    from transformers.utils import get_json_schema

    return [get_json_schema(calculator)]


def tool_chat_template(tokenizer, training: bool = False) -> str:
    """TRL's Qwen2.5 template for a ChatML model (training: the variant with
    {% generation %} markers for the assistant-only loss). A model whose turns are not
    ChatML stops here in one line: the tool stages render every turn with this template."""
    from trl import chat_template_utils

    vocabulary = tokenizer.get_vocab()
    if "<|im_start|>" not in vocabulary or "<|im_end|>" not in vocabulary:
        raise UserError("tool_sft: the model's tokenizer has no ChatML <|im_start|>/<|im_end|> tokens; the tool "
                        "stages render tool calls with the Qwen2.5 ChatML template (model.source must be ChatML)")
    return (chat_template_utils.qwen2_5_training_chat_template if training
            else chat_template_utils.qwen2_5_chat_template)


def render_tool_prompts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Each open conversation as the prompt of the assistant's next turn, the tool offered."""
    template, tools = tool_chat_template(tokenizer), tool_schemas()
    return [tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                          add_generation_prompt=True) for messages in conversations]


def parse_call(text: str) -> dict:
    """The JSON object inside one <tool_call> block; a ToolError when it is not one."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError as error:
        raise ToolError(f"the call is not JSON ({error.msg})") from error
    if not isinstance(call, dict):
        raise ToolError("the call is not a JSON object")
    return call


def run_call(call: dict) -> str:
    """The calculator's answer to a parsed call; a ToolError names what is wrong."""
    if call.get("name") != TOOL_NAME:
        raise ToolError(f"unknown tool; the only tool is {TOOL_NAME!r}")
    arguments = call.get("arguments")
    if not isinstance(arguments, dict) or not isinstance(arguments.get("expression"), str):
        raise ToolError('arguments must be {"expression": "<arithmetic>"}')
    return calculate(arguments["expression"])


def tool_messages(question: str, prompt: PromptParams) -> list[dict]:
    """A GSM problem: the system turn (the template adds the tool's schema to it), then the
    same user turn as posttrain.generation."""
    return [{"role": "system", "content": prompt.system or DEFAULT_SYSTEM},
            {"role": "user", "content": prompt.instruction.format(question=question)}]


def call_message(content: str, expressions: list[str]) -> dict:
    """An assistant turn that ends in calls of the calculator."""
    return {"role": "assistant", "content": content, "tool_calls": [
        {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"expression": e}}} for e in expressions]}


def result_message(result: str) -> dict:
    return {"role": "tool", "name": TOOL_NAME, "content": result}


def tool_conversation(record: dict, prompt: PromptParams) -> tuple[list[dict], int]:
    """A reference solution as a tool-calling conversation and its number of calls. Each
    arithmetic step whose written result the calculator confirms becomes a call made
    before the sentence that states it: the assistant writes up to that sentence, calls
    the tool and stops; the tool's result comes back; the next turn writes the sentence
    whole, the call's expression and its result ("Ben has 3 * 7 = 21 cupcakes."). So every
    turn starts where a sentence starts, the first one included (often with the call
    alone), and the text copies the expression it called rather than the call guessing
    the text's. A step whose written result the calculator does not give (a rounded
    figure) stays plain text."""
    solution = ANNOTATION.sub(_unannotated, record["solution"])
    messages = tool_messages(record["question"], prompt)
    turn_start, calls = 0, 0
    for match in EQUATION.finditer(solution):
        expression, written = match.group(1), match.group(2)
        try:
            result = calculate(expression)
        except ToolError:
            continue
        if float(result) != float(number(written)):
            continue
        # The start of the step's sentence; a second step of one sentence is called at once.
        boundaries = [b.end() for b in SENTENCE_END.finditer(solution, turn_start, match.start(1))]
        split = boundaries[-1] if boundaries else turn_start
        messages += [call_message(solution[turn_start:split].strip(), [expression.strip()]), result_message(result)]
        turn_start, calls = split, calls + 1
    messages.append({"role": "assistant", "content": solution[turn_start:].strip()})
    return messages, calls


def _unannotated(match: re.Match) -> str:
    """GSM8K's calculator annotation as the plain step: "48/2 = <<48/2=24>>24" reads
    "48/2 = 24", and "earned <<12*50=600>>600" reads "earned 12*50 = 600"."""
    before = match.string[: match.start()].rstrip().removesuffix("$").rstrip()
    return "" if before.endswith("=") else f"{match.group(1)} = "


@dataclass
class ToolTranscript:
    """One problem solved with the tool in the loop."""

    text: str = ""  # the assistant's turns with the tool's results between them
    calls: int = 0
    valid_calls: int = 0
    finished: bool = False  # ended a turn without a call (else it ran out of calls)
    errors: list[str] = field(default_factory=list)


def solve_with_tool(engine, tokenizer, questions: list[str], prompt: PromptParams, max_calls: int,
                    max_new_tokens: int, desc: str = "tool loop") -> tuple[list[ToolTranscript], float]:
    """Greedy tool-calling conversations for every question, all open ones advancing one
    turn per engine call: a turn that ends in calls gets the tool's results (or errors, as
    TRL's GRPO gives them) and another turn, up to max_calls such turns (TRL's
    max_tool_calling_iterations); a turn without a call is the answer. Returns the
    transcripts and the engine's seconds."""
    conversations = [tool_messages(q, prompt) for q in questions]
    transcripts = [ToolTranscript() for _ in questions]
    open_ids, seconds = list(range(len(questions))), 0.0
    for turn in range(max_calls + 1):
        if not open_ids:
            break
        out = engine.generate(render_tool_prompts(tokenizer, [conversations[i] for i in open_ids]), max_new_tokens,
                              desc=f"{desc}, turn {turn + 1}")
        seconds += out.seconds
        still_open = []
        for i, completion in zip(open_ids, out.completions):
            transcript, blocks = transcripts[i], list(CALL.finditer(completion))
            if not blocks:
                transcript.text += completion
                transcript.finished = True
                conversations[i].append({"role": "assistant", "content": completion})
                continue
            before = completion[: blocks[0].start()]
            transcript.text += before
            results = []
            try:  # the turn as a message with its calls, as the template writes it back
                calls = [parse_call(block.group(1).strip()) for block in blocks]
                conversations[i].append({"role": "assistant", "content": before.rstrip("\n"), "tool_calls": [
                    {"type": "function", "function": {"name": call.get("name"), "arguments": call.get("arguments", {})}}
                    for call in calls]})
            except ToolError as error:  # a block that is no JSON object: the turn stays as written
                calls = [None] * len(blocks)
                conversations[i].append({"role": "assistant", "content": completion[: blocks[-1].end()]})
                results = [json.dumps({"error": str(error)})] * len(blocks)
                transcript.errors += [str(error)] * len(blocks)
            transcript.calls += len(blocks)
            if not results:
                for call in calls:
                    try:
                        results.append(run_call(call))
                        transcript.valid_calls += 1
                    except ToolError as error:  # TRL's GRPO answers a failed call the same way
                        results.append(json.dumps({"error": str(error)}))
                        transcript.errors.append(str(error))
            transcript.text += "".join(f" {result} " for result in results)
            if turn < max_calls:
                conversations[i] += [result_message(r) for r in results]
                still_open.append(i)
        open_ids = still_open
    return transcripts, seconds


def transcript_text(completion) -> str:
    """A completion of TRL's GRPO with tools (the assistant's messages and the tool's, in
    order) read as solve_with_tool writes a transcript: the assistant's text with each
    result between."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] if m["role"] == "assistant" else f" {m['content']} " for m in completion)


def tool_reward_functions(weights, max_completion_length: int) -> tuple[list, list[float]]:
    """Reward functions and their weights for TRL's GRPOTrainer with tools: the verifier's
    parts (posttrain/rewards.py) of the whole conversation's text, and the optional length
    penalty on its tokens (the tool's results included, as TRL counts them). TRL logs each
    as rewards/<name>/mean. weights: params tool_rl.reward."""
    from posttrain.rewards import reward_parts

    def exact(completions, answer, **_):
        return [reward_parts(transcript_text(c), a)["exact"] for c, a in zip(completions, answer)]

    def format(completions, answer, **_):  # noqa: A001 - the name TRL shows in its logs
        return [reward_parts(transcript_text(c), a)["format"] for c, a in zip(completions, answer)]

    functions, function_weights = [exact, format], [weights.exact, weights.format]
    if weights.length:
        def length(completion_ids, **_):
            return [-min(len(ids) / max_completion_length, 1.0) for ids in completion_ids]

        functions.append(length)
        function_weights.append(weights.length)
    return functions, function_weights


def tool_grpo_trainer(policy, tokenizer, records: list[dict], prompt: PromptParams, cfg, trainer_arguments: dict):
    """TRL's GRPOTrainer with the calculator offered (tools=[calculator]) on GSM records:
    prompts as tool_messages, TRL's Qwen2.5 template set on the tokenizer (TRL renders the
    tool's schema with it and parses the model's calls with its response template), the
    verifier's reward on each whole conversation, at most cfg.max_calls tool turns per
    completion. cfg: params tool_rl; trainer_arguments: output_dir, learning rate, steps..."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tokenizer.chat_template = tool_chat_template(tokenizer)
    dataset = Dataset.from_list([{"prompt": tool_messages(r["question"], prompt), "answer": r["answer"]}
                                 for r in records])
    functions, function_weights = tool_reward_functions(cfg.reward, cfg.max_completion_length)
    config = GRPOConfig(
        **trainer_arguments,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        max_tool_calling_iterations=cfg.max_calls,
        temperature=cfg.temperature,
        beta=cfg.beta,
        reward_weights=function_weights,
        lr_scheduler_type="constant",  # as stage rl
        weight_decay=0.0,
        disable_dropout=True,  # as stage rl: the log-probs are the sampler's
    )
    return GRPOTrainer(model=policy, reward_funcs=functions, args=config, train_dataset=dataset,
                       processing_class=tokenizer, tools=[calculator])


def tool_use_summary(transcripts: list[ToolTranscript], correct: list[bool]) -> dict:
    """Accuracy with its interval, and how the tool was used: calls per problem, the share of
    calls the tool could run, the share of problems with a call and of those finished."""
    from posttrain.stats import rate_summary

    calls = sum(t.calls for t in transcripts)
    n = len(transcripts)
    return {"strict_accuracy": rate_summary(correct),
            "calls_per_problem": round(calls / n, 3) if n else 0.0,
            "tool_call_validity": round(sum(t.valid_calls for t in transcripts) / calls, 4) if calls else None,
            "problems_with_calls": round(sum(t.calls > 0 for t in transcripts) / n, 4) if n else 0.0,
            "finished": round(sum(t.finished for t in transcripts) / n, 4) if n else 0.0}
