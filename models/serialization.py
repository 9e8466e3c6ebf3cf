"""Versioned, bounded model-state serialisation.

Model state travels in the advertiser's changelog record. Two rules keep that safe and cheap:

* JSON-able state (``robust-baseline``) is stored as is inside a versioned envelope.
* River detectors are object graphs; they are pickled, but loaded through a restricted unpickler
  that admits only River's, this package's and a few builtin classes, and every blob is
  size-checked. Arbitrary pickles from a topic never execute code here.

>>> loads_river(dumps_river({"a": [1, 2]}))
{'a': [1, 2]}
>>> import os, pickle, base64, zlib
>>> evil = base64.b64encode(zlib.compress(pickle.dumps(os.system))).decode()
>>> loads_river(evil)
Traceback (most recent call last):
...
models.serialization.UnsafeState: posix.system is not allowed in model state
"""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from typing import Any

FORMAT = 1
# Compressed River state; below the engine's 256 KiB advertiser record so a state that
# serialises always fits the record that carries it.
MAX_STATE_BYTES = 128 * 1024
MAX_DECOMPRESSED_BYTES = 4 * 1024 * 1024

# Exact (module, name) pairs the built-in River specs need; nothing else is ever resolved.
# Dotted names are refused outright: pickle resolves "a.b" attribute chains, which would turn
# any allowed module into a path to os.system. A new River spec extends this list knowingly.
ALLOWED_CLASSES = frozenset({
    ("builtins", "tuple"),
    ("collections", "defaultdict"),
    ("functools", "partial"),
    ("random", "Random"),
    ("models.river_adapters", "PerFeatureSAD"),
    ("river.anomaly.hst", "HalfSpaceTrees"),
    ("river.anomaly.sad", "StandardAbsoluteDeviation"),
    ("river.stats.mean", "Mean"),
    ("river.stats.var", "Var"),
    ("river.tree.padded", "PaddedBranch"),
    ("river.tree.padded", "PaddedLeaf"),
    ("river.anomaly.svm", "OneClassSVM"),
    ("river._river_rust.vectordict", "VectorDict"),
    ("river.optim.initializers", "Zeros"),
    ("river.optim.losses", "Hinge"),
    ("river.optim.schedulers", "Constant"),
    ("river.optim.sgd", "SGD"),
})


class StateTooLarge(ValueError):
    pass


class UnsafeState(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if "." in name or (module, name) not in ALLOWED_CLASSES:
            raise UnsafeState(f"{module}.{name} is not allowed in model state")
        return super().find_class(module, name)


def dumps_river(obj: Any) -> str:
    raw = zlib.compress(pickle.dumps(obj, protocol=5), 3)
    if len(raw) > MAX_STATE_BYTES:
        raise StateTooLarge(f"model state {len(raw)} bytes > {MAX_STATE_BYTES}")
    return base64.b64encode(raw).decode("ascii")


def loads_river(text: str) -> Any:
    raw = base64.b64decode(text)
    if len(raw) > MAX_STATE_BYTES:
        raise StateTooLarge(f"model state {len(raw)} bytes > {MAX_STATE_BYTES}")
    inflater = zlib.decompressobj()
    data = inflater.decompress(raw, MAX_DECOMPRESSED_BYTES)
    if inflater.unconsumed_tail:
        raise StateTooLarge(f"model state inflates beyond {MAX_DECOMPRESSED_BYTES} bytes")
    return _RestrictedUnpickler(io.BytesIO(data)).load()
