"""Language check speed: lingua (what the generate filter uses) vs langdetect, same texts.

    python bench/language.py [--repeat 50]

Times `LanguageCheck.ok` (lingua, low-accuracy mode, every language) against langdetect's
`detect` with a fixed seed (the previous filter; `pip install langdetect` for the baseline) on
the same sentence-length texts in English, Spanish, French and German, after one warm-up call
each (model loading is paid once per run). Prints texts/s for both, the ratio, and whether
the two agree with the expected language.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matrix.gen.filters import LanguageCheck  # noqa: E402

TEXTS = [
    ("en", "Water the basil when the top of the soil feels dry and give it six hours of sun."),
    ("en", "The capital of Australia is Canberra, chosen as a compromise between two cities."),
    ("en", "Write a Python function that reverses a linked list in place and returns its head."),
    ("es", "Para hacer pan de masa madre necesitas harina, agua, sal y un cultivo activo."),
    ("fr", "Le chat dort sur le canapé pendant que la pluie tombe doucement sur les fenêtres."),
    ("de", "Der schnelle braune Fuchs springt über den faulen Hund, während die Sonne sinkt."),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    texts = [t for _, t in TEXTS] * args.repeat
    want = [lang == "en" for lang, _ in TEXTS] * args.repeat

    check = LanguageCheck("en")
    check.ok(texts[0])
    t0 = time.perf_counter()
    got = [check.ok(t) for t in texts]
    lingua_s = time.perf_counter() - t0
    print(f"lingua:     {len(texts) / lingua_s:8.1f} texts/s, correct {got == want}")

    try:
        from langdetect import DetectorFactory, detect
    except ImportError:
        sys.exit("langdetect is not installed (`pip install langdetect`): no baseline")
    DetectorFactory.seed = 0
    detect(texts[0])
    t0 = time.perf_counter()
    base = [detect(t) == "en" for t in texts]
    base_s = time.perf_counter() - t0
    print(f"langdetect: {len(texts) / base_s:8.1f} texts/s, correct {base == want}")
    print(f"lingua / langdetect speed: {base_s / lingua_s:.2f}x ({len(texts)} texts)")


if __name__ == "__main__":
    main()
