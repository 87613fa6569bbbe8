"""A BERT sentence-embedding model (Hugging Face layout, safetensors) to GGUF
for llama.cpp's /v1/embeddings.

The same metadata, vocabulary and tensor names as llama.cpp's
convert_hf_to_gguf.py writes for `BertModel` (architecture `bert`, WordPiece
vocabulary in "phantom space" form, non-causal attention, the pooling of
the sentence-transformers config), without its dependencies: that converter
loads every tensor through torch and the vocabulary through transformers.
Here the safetensors file is read with numpy and the vocabulary from
vocab.txt; the `gguf` package (llama.cpp's own writer) writes the file.

    python bert_to_gguf.py MODEL_DIR OUT.gguf

2-D weights are written as f16 (the converter's default), norms, biases,
position and token-type embeddings as f32. The output depends only on the input files.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
# Tensors an embedding model does not use (as the upstream converter drops them).
SKIPPED = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
F32_2D = {"position_embd.weight", "token_types.weight"}


class ConversionError(Exception):
    pass


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ConversionError(f"{path}: not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=dtype)
        tensors[name] = array.reshape(info["shape"])
    return tensors


def pooling_type(model_dir: Path) -> gguf.PoolingType:
    config = model_dir / "1_Pooling" / "config.json"
    if not config.is_file():
        return gguf.PoolingType.MEAN
    pooling = json.loads(config.read_text())
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    raise ConversionError(f"{config}: unsupported pooling {pooling}")


def vocabulary(model_dir: Path) -> tuple[list[str], list[int]]:
    tokens = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    special = set()
    tokenizer = model_dir / "tokenizer.json"
    if tokenizer.is_file():
        for added in json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", []):
            if added.get("special"):
                special.add(added["content"])
    else:
        special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    types = [
        int(gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL) for t in tokens
    ]

    # llama.cpp's WordPiece tokenizer wants word starts marked with U+2581
    # and continuation pieces without their "##" (as the converter writes).
    def phantom(token: str, kind: int) -> str:
        if kind == gguf.TokenType.CONTROL:
            return token
        if token.startswith("##"):
            return token[2:]
        return "\u2581" + token

    return [phantom(t, k) for t, k in zip(tokens, types)], types


def convert(model_dir: Path, out: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ConversionError(f"{model_dir}: model_type {config.get('model_type')!r}, not bert")
    blocks = int(config["num_hidden_layers"])
    tensors = read_safetensors(model_dir / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    tokens, types = vocabulary(model_dir)
    if len(tokens) != int(config["vocab_size"]):
        raise ConversionError(f"vocab.txt has {len(tokens)} tokens, config says {config['vocab_size']}")

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(model_dir.parent.name if model_dir.name == "model" else model_dir.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(blocks)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling_type(model_dir))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)

    for name, array in tensors.items():
        if name in SKIPPED:
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"no GGUF name for tensor {name}")
        # As the upstream converter: f16 for 2-D weights, except the
        # position and token-type embeddings (added to f32 activations).
        half = array.ndim == 2 and target not in F32_2D
        array = array.astype(np.float16 if half else np.float32)
        writer.add_tensor(target, np.ascontiguousarray(array))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    try:
        convert(args.model_dir, args.out)
    except (ConversionError, OSError, KeyError, ValueError) as e:
        print(f"bert_to_gguf: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
