"""Can the LLM answer easy-VQA's yes/no questions when the image is given as text? (not a test)

    python -m bench.yes_no_text_probe runs/main/assets/smollm2-135m-instruct

The test split's first 150 images: each yes/no question asked with the image's alt-text in the
prompt ("The image shows a red circle. Is there a red shape? Answer yes or no.") and alone;
'yes' ranked against 'no' at the answer position; accuracy, balanced accuracy per question template
(docs/RESULTS.md, "Why yes/no stays at chance")."""
import collections
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_ext.data import easyvqa

llm = sys.argv[1]
tok = AutoTokenizer.from_pretrained(llm); model = AutoModelForCausalLM.from_pretrained(llm).eval()
yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
samples = easyvqa.load_split("test")[:150]
rows = []
for s in samples:
    desc = easyvqa.alt_text(s)
    for q, a in s.pairs:
        if a not in ("yes", "no"):
            continue
        for mode, content in (("with text", f"The image shows {desc}. {q}"), ("question only", q)):
            msgs = [{"role": "user", "content": content + " Answer yes or no."}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
            if not torch.is_tensor(ids): ids = ids["input_ids"]
            with torch.no_grad():
                logits = model(ids).logits[0, -1]
            pred = "yes" if logits[yes] > logits[no] else "no"
            template = " ".join("<c>" if w in easyvqa.colours() else "<s>" if w in easyvqa.SHAPES else w for w in q.rstrip("?").split())
            rows.append((mode, template, a, pred))
for mode in ("with text", "question only"):
    r = [x for x in rows if x[0] == mode]
    acc = sum(p == a for _, _, a, p in r) / len(r)
    per = collections.defaultdict(lambda: collections.defaultdict(list))
    for _, t, a, p in r: per[t][a].append(p == a)
    bal = [sum(sum(v) / len(v) for v in d.values()) / len(d) for d in per.values() if len(d) == 2]
    share_yes = sum(p == "yes" for *_, p in r) / len(r)
    print(f"{mode}: {len(r)} yes/no questions, accuracy {acc:.3f}, balanced per template {sum(bal)/len(bal):.3f}, answers 'yes' {share_yes:.2f}")
