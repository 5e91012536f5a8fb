"""The embedded SmolLM2's conversion shares one parse of the GGUF (matrix.llm.embedded)."""

from __future__ import annotations

import gguf

from matrix.llm.embedded import _gguf_parsed_once, smollm2_gguf


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
