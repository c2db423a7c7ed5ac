"""The reference for bench/rl_step_time.py: a plain TRL GRPOTrainer script as the TRL
docs show it, with the same model (base + SFT adapter), data and settings as stage rl.

    python bench/plain_trl_grpo.py STEPS PROMPTS_PER_STEP NUM_GENERATIONS MAX_NEW_TOKENS
Prints one JSON line: {"steps": ..., "seconds": ..., "seconds_per_step": ...}.
"""

import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

steps, prompts_per_step, generations, max_new_tokens = (int(x) for x in sys.argv[1:5])
torch.set_num_threads(len(os.sched_getaffinity(0)))
instruction = "{question}\nSolve it step by step. Write the final answer on its own last line as: #### <number>"
rows = [json.loads(line) for line in open("data/prepared/rl.jsonl")][:64]
dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": instruction.format(question=r["question"])}],
                              "answer": r["answer"]} for r in rows])


def exact(completions, answer, **_):
    found = [re.search(r"####\s*(-?[\d,.]+)", c[0]["content"]) for c in completions]
    return [float(bool(m) and m.group(1).replace(",", "").rstrip(".") == a) for m, a in zip(found, answer)]


def format_(completions, **_):
    return [float(bool(re.search(r"####\s*-?[\d,.]+", c[0]["content"]))) for c in completions]


tokenizer = AutoTokenizer.from_pretrained("models/base")
base = AutoModelForCausalLM.from_pretrained("models/base", dtype=torch.float32)
model = PeftModel.from_pretrained(base, "models/sft", is_trainable=True)
with tempfile.TemporaryDirectory() as out:
    args = GRPOConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=prompts_per_step * generations,
                      num_generations=generations, max_completion_length=max_new_tokens, temperature=0.8,
                      learning_rate=1e-4, beta=0.0, loss_type="grpo", reward_weights=[1.0, 0.1], use_cpu=True,
                      bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1,
                      seed=42)
    trainer = GRPOTrainer(model=model, reward_funcs=[exact, format_], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
print(json.dumps({"steps": steps, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / steps, 2)}))
