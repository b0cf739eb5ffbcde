"""Convert a GGUF checkpoint into a transformers directory (safetensors + tokenizer).

Run by path with the Python of an engine's own environment (it needs torch, transformers,
gguf and accelerate, which the main environment deliberately lacks):

    ENGINE_PYTHON gguf_to_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF weights on load; the quantizer it attaches is dropped before
saving so that the output is a plain full-precision checkpoint any engine can load.
"""

import sys
import time
from pathlib import Path


def main() -> None:
    gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
    t0 = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    print(f"converted {gguf} -> {out} in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
