"""Versioned, bounded model-state serialisation.

Model state travels in the advertiser's changelog record. Two rules keep that safe and cheap:

* JSON-able state (``robust-baseline``) is stored as is inside a versioned envelope.
* River detectors are object graphs; they are pickled, but loaded through a restricted unpickler
  that admits only River's, this package's and a few builtin classes, and every blob is
  size-checked. Arbitrary pickles from a topic never execute code here.

>>> blob = dumps_river({"a": [1, 2]})
>>> loads_river(blob)
{'a': [1, 2]}
"""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from typing import Any

FORMAT = 1
MAX_STATE_BYTES = 512 * 1024

_ALLOWED_MODULE_PREFIXES = ("river.", "models.", "collections", "numpy", "builtins", "copyreg",
                            "functools", "random", "_random", "math", "array")


class StateTooLarge(ValueError):
    pass


class UnsafeState(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in ("eval", "exec", "compile", "open", "__import__",
                                             "getattr", "setattr", "delattr", "input"):
            raise UnsafeState(f"{module}.{name} is not allowed in model state")
        if module.startswith(_ALLOWED_MODULE_PREFIXES) or module in ("river", "models"):
            return super().find_class(module, name)
        raise UnsafeState(f"{module}.{name} is not allowed in model state")


def dumps_river(obj: Any) -> str:
    raw = zlib.compress(pickle.dumps(obj, protocol=5), 3)
    if len(raw) > MAX_STATE_BYTES:
        raise StateTooLarge(f"model state {len(raw)} bytes > {MAX_STATE_BYTES}")
    return base64.b64encode(raw).decode("ascii")


def loads_river(text: str) -> Any:
    raw = base64.b64decode(text)
    if len(raw) > MAX_STATE_BYTES:
        raise StateTooLarge(f"model state {len(raw)} bytes > {MAX_STATE_BYTES}")
    return _RestrictedUnpickler(io.BytesIO(zlib.decompress(raw))).load()
