"""How many steps does the LLM need to learn easy-VQA's yes/no comparison when the image is given
as text? (not a test)

    python -m bench.yes_no_text_sft runs/main/assets/smollm2-135m-instruct STEPS LR

The whole LLM fine-tuned on the yes/no pairs of easy-VQA's first 600 TRAIN images, the image as its
alt-text in the prompt, yes/no balanced per question template, batch 16, AdamW, the loss on the
answer token; balanced accuracy per template on the first 100 TEST images' yes/no pairs at steps
0, 25, 50, 100, 200, 400 (docs/RESULTS.md, "Why yes/no stays at chance")."""
import collections
import random
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_ext.data import easyvqa

torch.manual_seed(0); random.seed(0)
llm = sys.argv[1]; steps = int(sys.argv[2]); lr = float(sys.argv[3])
tok = AutoTokenizer.from_pretrained(llm); model = AutoModelForCausalLM.from_pretrained(llm)
yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
def template(q): return " ".join("<c>" if w in easyvqa.colours() else "<s>" if w in easyvqa.SHAPES else w for w in q.rstrip("?").split())
def pairs(samples):
    out = []
    for s in samples:
        desc = easyvqa.alt_text(s)
        for q, a in s.pairs:
            if a in ("yes", "no"):
                ids = tok.apply_chat_template([{"role": "user", "content": f"The image shows {desc}. {q}"}], add_generation_prompt=True)
                if not isinstance(ids, list): ids = ids["input_ids"]
                out.append((ids, a, template(q)))
    return out
train = pairs(easyvqa.load_split("train")[:600])
by = collections.defaultdict(lambda: collections.defaultdict(list))
for p in train: by[p[2]][p[1]].append(p)
bal = []
for t, d in by.items():
    n = min(len(d["yes"]), len(d["no"]))
    for a in ("yes", "no"): bal += random.sample(d[a], n)
test = pairs(easyvqa.load_split("test")[:100])
def evaluate():
    model.eval(); per = collections.defaultdict(lambda: collections.defaultdict(list))
    with torch.no_grad():
        for ids, a, t in test:
            lg = model(torch.tensor([ids])).logits[0, -1]
            per[t][a].append(("yes" if lg[yes] > lg[no] else "no") == a)
    model.train()
    b = [sum(sum(v) / len(v) for v in d.values()) / len(d) for d in per.values() if len(d) == 2]
    return sum(b) / len(b)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
print(f"train pairs {len(bal)} (balanced), test {len(test)}; step 0 balanced {evaluate():.3f}", flush=True)
t0 = time.time(); B = 16
for step in range(1, steps + 1):
    batch = random.sample(bal, B); L = max(len(i) for i, _, _ in batch)
    x = torch.full((B, L), tok.pad_token_id or 0); m = torch.zeros(B, L, dtype=torch.long); last = []
    for k, (ids, a, _) in enumerate(batch):
        x[k, :len(ids)] = torch.tensor(ids); m[k, :len(ids)] = 1; last.append(len(ids) - 1)
    lg = model(input_ids=x, attention_mask=m).logits[torch.arange(B), last]
    target = torch.tensor([yes if a == "yes" else no for _, a, _ in batch])
    loss = torch.nn.functional.cross_entropy(lg, target); loss.backward(); opt.step(); opt.zero_grad()
    if step in (25, 50, 100, 200, 400) or step == steps:
        print(f"step {step} loss {loss.item():.3f} balanced {evaluate():.3f} ({time.time() - t0:.0f} s)", flush=True)
