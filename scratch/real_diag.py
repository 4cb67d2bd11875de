"""Real dims: which prefill op's per-token output changes with the chunk length (bf16, H200)."""
import sys, collections, argparse, tempfile
sys.path[:0] = ["src", "bench"]
import torch
from minimax01.causal_lm import MiniMaxForCausalLM
from minimax01.config import MiniMaxConfig
from minimax01.engine import LLMEngine
from minimax01.sampling import SamplingParams

torch.manual_seed(0)
print("cuBLAS row invariance, x[:m] @ W.T vs rows of x @ W.T (K=6144):")
for N in (3 * 8192, 6144, 32):
    W = torch.randn(N, 6144, device="cuda", dtype=torch.bfloat16) * 6144**-0.5
    x = torch.randn(2048, 6144, device="cuda", dtype=torch.bfloat16)
    full = x @ W.t()
    bad = [m for m in (1, 2, 8, 16, 64, 100, 256, 376, 632, 1000, 1024) if not torch.equal(x[:m] @ W.t(), full[:m])]
    print(f"  N={N}: M values whose rows differ from M=2048: {bad}")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    bad = [m for m in (1, 2, 8, 16, 64, 100, 256, 376, 632, 1000, 1024) if not torch.equal(x[:m] @ W.t(), full[:m] if False else (x @ W.t())[:m])]
    print(f"  N={N}, no reduced-precision reduction: {bad}")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True

config = MiniMaxConfig.preset_slice("text-01", 8)
with tempfile.TemporaryDirectory() as d:
    config.save_pretrained(d)
    model = MiniMaxForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device="cuda", load_format="dummy")
ids = torch.randint(0, 1000, (1000,), generator=torch.Generator().manual_seed(3)).tolist()

def run(budget):
    rec = collections.OrderedDict()
    hooks = []
    for name, mod in model.named_modules():
        if name.count(".") < 2 or name.endswith("layers"):
            continue
        def hook(m, inp, out, name=name):
            t = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(t) and t.dim() >= 2:
                rec.setdefault(name, []).append(t.detach().reshape(-1, t.shape[-1]).float().cpu())
        hooks.append(mod.register_forward_hook(hook))
    eng = LLMEngine(model, kv_block_size=64, prefix_caching=False, max_num_batched_tokens=budget, max_model_len=4096)
    eng.add_request(ids, SamplingParams(temperature=0.0, max_new_tokens=1, logprobs=0))
    while eng.has_unfinished():
        eng.step()
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in rec.items()}

a, b = run(2048), run(256)
shown = 0
for k in a:
    d = (a[k] - b[k]).abs()
    lo, hi = d[:256].max().item(), d[256:].max().item()
    if (lo or hi) and shown < 25:
        shown += 1
        print(f"{k:45s} rows<256 {lo:.3g} rows>=256 {hi:.3g}")
print("modules compared:", len(a), "differing:", sum(bool((a[k] - b[k]).abs().max()) for k in a))
