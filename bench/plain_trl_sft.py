"""The reference for bench/sft_throughput.py: a plain TRL SFTTrainer script, written
the way the TRL docs show, on the same model, data and settings as stage `sft`.

    python bench/plain_trl_sft.py STEPS BATCH_SIZE MAX_LENGTH
Prints one JSON line: {"tokens": ..., "seconds": ..., "tokens_per_second": ...}.
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

steps, batch_size, max_length = (int(x) for x in sys.argv[1:4])
torch.set_num_threads(len(os.sched_getaffinity(0)))
instruction = "{question}\nSolve it step by step. Write the final answer on its own last line as: #### <number>"
rows = [json.loads(line) for line in open("data/prepared/sft.jsonl")]
dataset = Dataset.from_list([{"messages": [
    {"role": "user", "content": instruction.format(question=r["question"])},
    {"role": "assistant", "content": r["solution"]}]} for r in rows])

tokenizer = AutoTokenizer.from_pretrained("models/base")
model = AutoModelForCausalLM.from_pretrained("models/base", dtype=torch.float32)
with tempfile.TemporaryDirectory() as out:
    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=2e-4,
                     max_length=max_length, assistant_only_loss=True, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to=[], save_strategy="no", logging_steps=5,
                     include_num_input_tokens_seen="non_padding", seed=42)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
tokens = trainer.state.num_input_tokens_seen
print(json.dumps({"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1)}))
