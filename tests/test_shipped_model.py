"""The shipped demo folder carries the same code files as the repo root (a Hub folder loads its own copies)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "illada-demo"
CODE_FILES = ("configuration_illada.py", "modeling_illada.py", "generation_illada.py", "scoring_illada.py", "cache_illada.py",
              "utils_illada.py", "generation_config_illada.py", "sampler_illada.py", "loading_illada.py",
              "masks_illada.py")


@pytest.mark.skipif(not DEMO.is_dir(), reason="no illada-demo/ folder")
@pytest.mark.parametrize("name", CODE_FILES)
def test_demo_folder_code_matches_repo(name):
    assert (DEMO / name).read_text() == (ROOT / name).read_text(), (
        f"illada-demo/{name} differs from the repo root's: copy it over (cp {name} illada-demo/)"
    )
