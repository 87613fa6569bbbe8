"""A small chat model for llama.cpp, generated: real `llama` architecture
metadata, a real byte-level BPE tokenizer (GPT-2 style, with merges), a
ChatML chat template, and random weights from a fixed seed.

    python make_chat_model.py OUT.gguf [--seed N]

llama-server loads it like any Llama-family GGUF, applies the template,
tokenizes, runs every layer and samples token by token, so
/v1/chat/completions does real inference and real streaming. The weights
are random, so the text is gibberish: what is real is the work and the
protocol, not the prose. The same seed gives the same file, byte for byte.

The vocabulary is printable ASCII, space and newline, merges that build a
few hundred common English words and pieces, and the ChatML specials. The
output rows of the special tokens are zero while the others are large, so
sampling practically never ends a stream early: a request runs to its
max_tokens, which keeps tests and benchmarks stable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gguf
import numpy as np

N_EMBD = 256
N_LAYER = 4
N_HEAD = 8
N_HEAD_KV = 4
N_FF = 688
N_CTX = 2048

WORDS = """
the be to of and a in that have it for not on with he as you do at this but his by
from they we say her she or an will my one all would there their what so up out if
about who get which go me when make can like time no just him know take people into
year your good some could them see other than then now look only come its over think
also back after use two how our work first well way even new want because any these
give day most us hello world attested enclave model prompt token stream secure trust
verify answer question engine server client policy evidence quote measure key llama
""".split()

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_symbol(b: int) -> str:
    """GPT-2's bytes_to_unicode for the bytes used here."""
    if 0x21 <= b <= 0x7E:
        return chr(b)
    if b == 0x20:
        return "\u0120"  # Ġ
    if b == 0x0A:
        return "\u010a"  # Ċ
    raise ValueError(f"byte {b:#x} is not in this vocabulary")


def tokenizer() -> tuple[list[str], list[int], list[str]]:
    tokens = [byte_symbol(b) for b in range(0x21, 0x7F)] + [byte_symbol(0x20), byte_symbol(0x0A)]
    seen = set(tokens)
    merges: list[str] = []
    # Each word with and without its leading space, merged left to right.
    for word in WORDS:
        for text in (word, " " + word):
            symbols = [byte_symbol(ord(c)) for c in text]
            left = symbols[0]
            for right in symbols[1:]:
                merged = left + right
                if merged not in seen:
                    merges.append(f"{left} {right}")
                    tokens.append(merged)
                    seen.add(merged)
                left = merged
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    tokens += SPECIALS
    types += [int(gguf.TokenType.CONTROL)] * len(SPECIALS)
    return tokens, types, merges


def generate(out: Path, seed: int) -> None:
    tokens, types, merges = tokenizer()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def weight(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name("aver-tiny-chat")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_eot_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    head_dim = N_EMBD // N_HEAD
    writer.add_tensor("token_embd.weight", weight(n_vocab, N_EMBD, std=1.0))
    for i in range(N_LAYER):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    # Logits of about ±4 for ordinary tokens and exactly 0 for the specials.
    output = weight(n_vocab, N_EMBD, std=0.25)
    output[-len(SPECIALS) :] = 0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=20261)
    args = parser.parse_args()
    try:
        generate(args.out, args.seed)
    except (OSError, ValueError) as e:
        print(f"make_chat_model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
