"""The operations doc lists every setting the code reads (docs cannot silently fall behind)."""

from pathlib import Path

from app.settings import settings_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_every_setting_is_documented_with_its_default() -> None:
    text = DOC.read_text()
    for env, default, _doc in settings_table():
        assert f"| `{env}` | `{default}` |" in text, f"{env} missing from docs/operations.md"
