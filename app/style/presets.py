"""The preset style paintings: a fixed table, looked up by name only (never a path built from user input).

Files are in data/style/ (provenance: see docs/style.md). All four paintings are in the public domain.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

STYLE_DIR = Path(__file__).resolve().parents[2] / "data" / "style"

_PRESETS = {
    "starry_night": {
        "file": "starry_night.jpg", "title": "The Starry Night", "artist": "Vincent van Gogh", "year": 1889,
        "licence": "public domain",
        "source": "jcjohnson/neural-style @ 07c4b8299f8fbdafec0c514fc820ff1d7ff62e46, examples/inputs/starry_night.jpg",
    },
    "the_scream": {
        "file": "the_scream.jpg", "title": "The Scream", "artist": "Edvard Munch", "year": 1893,
        "licence": "public domain",
        "source": "jcjohnson/neural-style @ 07c4b8299f8fbdafec0c514fc820ff1d7ff62e46, examples/inputs/the_scream.jpg",
    },
    "shipwreck": {
        "file": "shipwreck.jpg", "title": "The Shipwreck", "artist": "J. M. W. Turner", "year": 1805,
        "licence": "public domain",
        "source": "jcjohnson/neural-style @ 07c4b8299f8fbdafec0c514fc820ff1d7ff62e46, examples/inputs/shipwreck.jpg",
    },
    "udnie": {
        "file": "udnie.jpg", "title": "Udnie", "artist": "Francis Picabia", "year": 1913,
        "licence": "public domain (US: published before 1929; EU: since 2024)",
        "source": "pytorch/examples @ 77f55b912142e11fcfdf5b530231fb9c52f181e8, "
                  "fast_neural_style/images/style-images/udnie.jpg",
    },
}
PRESETS = MappingProxyType({name: MappingProxyType(entry) for name, entry in _PRESETS.items()})


def list_presets() -> list[dict]:
    """Every preset as {"name", "title", "artist", "year", "licence", "source"} (no file paths), by name."""
    return [{"name": name, **{k: v for k, v in entry.items() if k != "file"}} for name, entry in sorted(PRESETS.items())]


def preset_path(name: str) -> Path:
    """The image file of a preset; KeyError for any name that is not in the table."""
    if not isinstance(name, str) or name not in PRESETS:
        raise KeyError(f"unknown style preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return STYLE_DIR / PRESETS[name]["file"]
