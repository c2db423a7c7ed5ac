"""Seconds per SFT step on tool-calling conversations (stage tool_sft's data, the tool's
schema in the system turn) against the same problems as plain question/solution pairs:
TRL's SFTTrainer, the pipeline's model, fp32, the same batch size.

    PYTHONPATH=. python bench/tool_sft_step.py [--steps 2] [--batch 8]

Run from the repository root after `dvc repro sft` (it reads models/base, models/sft and
data/prepared/sft.jsonl). Prints each kind's padded batch shape, labelled tokens and
seconds per step. A step's cost follows its tokens: the tool conversations are longer
(the schema alone is ~150 tokens), not costlier per token.
"""

import argparse
import json
import tempfile
import time

from posttrain.config import PromptParams
from posttrain.io import GSM_RECORD, read_jsonl
from posttrain.models import load_tokenizer
from posttrain.runtime import setup
from posttrain.config import load_params
from posttrain.tool_use import tool_chat_template, tool_conversation, tool_schemas
from posttrain.training import load_base_for_training, score_only_labelled_positions_on_cpu

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=2)
parser.add_argument("--batch", type=int, default=8)
args = parser.parse_args()
params = load_params()
setup(params.runtime, params.seed)

from datasets import Dataset  # noqa: E402
from peft import PeftModel  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

score_only_labelled_positions_on_cpu()  # as every stage's trainer
records = read_jsonl("data/prepared/sft.jsonl", GSM_RECORD)[: args.steps * args.batch]
for kind in ("plain", "tools"):
    tokenizer = load_tokenizer("models/base", padding_side="right")
    if kind == "tools":
        tokenizer.chat_template = tool_chat_template(tokenizer, training=True)
        data = [{"messages": tool_conversation(r, PromptParams())[0], "tools": json.dumps(tool_schemas())}
                for r in records]
    else:
        data = [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["solution"]}]} for r in records]
    policy = PeftModel.from_pretrained(load_base_for_training("models/base", "none"), "models/sft", is_trainable=True)
    trainer = SFTTrainer(model=policy, processing_class=tokenizer, train_dataset=Dataset.from_list(data),
                         args=SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-"), max_steps=args.steps,
                                        per_device_train_batch_size=args.batch, bf16=False, assistant_only_loss=True,
                                        max_length=512, report_to=[], use_cpu=True, save_strategy="no",
                                        gradient_checkpointing=False))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.batch)])
    started = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - started) / args.steps
    print(f"{kind}: first batch {tuple(batch['input_ids'].shape)}, {int((batch['labels'] != -100).sum())} labelled "
          f"tokens; {seconds:.1f} s/step")
