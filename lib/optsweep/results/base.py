"""The base of every results document, and the one read and the one write of them all.

Reading validates: a hand-edited, truncated or stale results file fails with one line naming the file and
the field (`ParamsError`), instead of a KeyError three modules later. Every document carries the
provenance of whatever command wrote it: the analyses take a `Provenance` and build their document with it
(`stamped`), so a document is never without one, in memory or on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..jsonio import read_json, to_strict, write_json
from ..params.settings import ParamsError
from ..provenance import provenance as writer_provenance

Interval = tuple[float | None, float | None]  # None: not finite (an upper bound: unbounded)


class Document(BaseModel):
    """Base of every results document: unknown fields are kept (newer writers), missing ones are errors."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Provenance(Document):
    """What produced a document: code version, params hash, time, and what the writer adds (data, trainer)."""

    code_version: str
    params_hash: str | None
    created: str

    @classmethod
    def now(cls, params_hash: str | None = None, **origin: Any) -> Provenance:
        """This checkout's code version and the current time, with the params hash (None: no params file) and
        what the writer adds (`origin`: data, trainer, the table analysed)."""
        return cls.model_validate(to_strict(writer_provenance(params_hash, **origin)))

    def recorded(self, part: str) -> Any:
        """What the writer added under `part` (e.g. `data_hash`, `trainer`), None when it did not."""
        return (self.model_extra or {}).get(part)


DocumentType = TypeVar("DocumentType", bound=Document)


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"field {where or '(document)'}: {first['msg']}"


def read_document(path: Path | str, kind: type[DocumentType]) -> DocumentType:
    """Read and validate a results file; any problem is one `ParamsError` line naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: results file not found")
    try:
        raw = read_json(path)
    except OSError as error:
        raise ParamsError(f"{path}: results file not readable ({error.strerror or error})") from None
    except ValueError as error:  # malformed JSON, or bytes that are not text
        raise ParamsError(f"{path}: not valid JSON ({error})") from None
    try:
        return kind.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{path}: not a valid {kind.__name__}: {_first_problem(error)}") from None


def as_json(document: Document) -> dict[str, Any]:
    """The document as the plain JSON mapping its file holds (for code that reads mappings)."""
    return document.model_dump(mode="json", by_alias=True)


def write_document(path: Path | str, document: Document) -> Path:
    """Write a document as strict JSON, atomically."""
    return write_json(Path(path), as_json(document))


def stamped(kind: type[DocumentType], content: dict[str, Any], provenance: Provenance) -> DocumentType:
    """An analysis's content, as it builds it (numpy numbers, NaN for what is not finite), as a validated
    document carrying `provenance`."""
    return kind.model_validate({**to_strict(content), "provenance": provenance})
