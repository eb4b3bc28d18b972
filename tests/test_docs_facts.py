"""Facts the docs state about the code: the preset list, sample outputs under their commands, what the README shows."""

from __future__ import annotations

import re
from pathlib import Path

import vit_jax

ROOT = Path(__file__).resolve().parents[1]


def section(page: str, heading: str) -> str:
    text = (ROOT / page).read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_model_page_lists_every_preset():
    presets = section("docs/model.md", "## Presets")
    missing = [name for name in vit_jax.list_presets() if f"{name}," not in presets and f"{name}`" not in presets]
    assert not missing, f"docs/model.md's preset list lacks {missing}"


def test_the_model_summary_sample_is_the_output_of_its_command():
    text = section("docs/model.md", "## Building and running a model")
    command = re.search(r"`python -m vit_jax.model_summary (\S+)`", text).group(1)
    sample = text[text.index("```\n", text.index("model_summary")) + 4 :]
    assert sample.startswith(f"{command}: "), (command, sample[:80])


def test_the_readme_comparison_and_rollout_picture_say_what_ships():
    readme = (ROOT / "README.md").read_text()
    models = next(line for line in readme.splitlines() if line.startswith("| models |"))
    assert "hybrid" in models.split("|")[2], models
    picture = readme[readme.index("**Attention maps**") : readme.index("attention_rollout_digit5.png")]
    assert "--classifier token" in picture and "--patch-size 2" in picture  # the model the picture comes from
