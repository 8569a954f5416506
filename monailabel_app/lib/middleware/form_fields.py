"""ASGI middleware: a ``params`` or ``info`` form field must be a JSON object, and ``POST /infer`` takes no
``label`` (HTTP 400).

MONAI Label's endpoints use these fields as dicts (``request.update(p)``, ``save_params["user"] = …``), so a value
that is JSON but not an object (``7``, ``[1]``, ``"x"``) failed inside them with a ``TypeError``, a 500. This
middleware reads the form fields as the body streams past, with python-multipart's streaming parsers (the ones
Starlette's form parsing uses), keeping at most ``max_field_bytes`` of each checked field and nothing of the other
parts, and raises from ``receive`` before the endpoint runs. Malformed JSON is left to the endpoint's
``json.loads``, which the app's ``JSONDecodeError`` handler answers with a 400. A ``label`` part of an inference
request (an interactive model's input, which no model this app serves takes) is refused as soon as its name is
read: MONAI Label decoded a ``.bin`` one against the image before any check, so an unknown image or a wrong size
was a 500. So is a file part whose file name has a NUL or suffixes over ``MAX_SUFFIX_BYTES`` bytes, and a field
that nests JSON too deeply to parse. Fields and file names are decoded as Starlette decodes them (the body's
charset, else latin-1), so a ``charset=utf-7`` body cannot hide ``[[[`` from the check.
"""

from __future__ import annotations

import codecs
import json
from pathlib import PurePosixPath
from typing import Any, Sequence
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header

from .headers import header
from .request_parts import path_parts

#: the longest suffixes (UTF-8 bytes after the first dot) of an uploaded part's file name: MONAI Label names its
#: temporary copy ``tmpXXXXXXXX`` plus them, and a name over the file system's 255 bytes failed there with a 500
MAX_SUFFIX_BYTES = 200

#: form parts an inference request may not carry, with the reason
INFER_REFUSED = {"label": "the label field is an interactive model's input, and no model this app serves takes "
                          "one: send the image (or its id) only"}


class FormFieldError(HTTPException):
    """Raised from ``receive``: an ``HTTPException``, so FastAPI's form parsing passes it on and the client gets
    the 400 with its message."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=400, detail=detail)


class _Fields:
    """The values of the checked fields as the parser reports them, checked when each field ends."""

    def __init__(self, names: Sequence[str], max_bytes: int, urlencoded: bool = False,
                 refused: dict[str, str] | None = None) -> None:
        self.names, self.max_bytes, self.urlencoded = {n.encode() for n in names}, max_bytes, urlencoded
        self.codec = "utf-8"  # a multipart body's: its charset, as Starlette reads it
        self.refused = {k.encode(): v for k, v in (refused or {}).items()}  # field name -> why it is refused
        self.error: str | None = None
        self.start()

    def start(self) -> None:
        """A new field begins; its name arrives through :meth:`name_part`, possibly in pieces."""
        self.raw_name, self.name, self.named, self.value = bytearray(), None, False, bytearray()

    def name_part(self, data: bytes, start: int, end: int) -> None:
        self.raw_name += data[start:end]

    def _resolve(self) -> None:
        """Whether the field is one to check, once its name is whole (its data or its end has come)."""
        if not self.named:
            name = bytes(self.raw_name)
            if self.urlencoded:
                name = unquote_to_bytes(name.replace(b"+", b" "))
            self.name, self.named = (name if name in self.names else None), True
            if name in self.refused and not self.error:
                self.error = self.refused[name]

    def data(self, data: bytes, start: int, end: int) -> None:
        self._resolve()
        if self.name is not None and len(self.value) <= self.max_bytes:
            self.value += data[start:end][: self.max_bytes + 1 - len(self.value)]

    def end(self) -> None:
        self._resolve()
        if self.name is None or self.error:
            return
        field = self.name.decode()
        if len(self.value) > self.max_bytes:
            self.error = f"the {field} field exceeds {self.max_bytes:,} bytes"
            return
        if self.urlencoded:
            self.value = bytearray(unquote_to_bytes(bytes(self.value).replace(b"+", b" ")))
        try:
            text = bytes(self.value).decode("utf-8") if self.urlencoded else decode_as_starlette(self.value, self.codec)
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            return  # malformed JSON: the endpoint's json.loads raises, and the app answers 400
        except RecursionError:
            self.error = f"the {field} field nests too deeply"
            return
        if not isinstance(parsed, dict):
            self.error = (f"the {field} field must be a JSON object, got {type(parsed).__name__}: "
                          f"{self.value.decode('utf-8', 'replace'):.80}")


def decode_as_starlette(data: bytes | bytearray, codec: str) -> str:
    """A multipart field's value or file name as Starlette decodes it: in the body's charset, else latin-1."""
    try:
        return bytes(data).decode(codec)
    except (UnicodeDecodeError, LookupError):
        return bytes(data).decode("latin-1")


def _file_name_error(part: str, filename: str) -> str | None:
    """Why MONAI Label cannot store an upload named ``filename``: it names its temporary copy ``tmpXXXXXXXX`` plus
    the name's suffixes, so a NUL or suffixes over the file system's 255 bytes failed there with a 500."""
    if "\x00" in filename:
        return f"the file name of the {part!r:.40} part has a NUL"
    suffixes = "".join(PurePosixPath(filename).suffixes)
    if len(suffixes.encode("utf-8", "surrogateescape")) > MAX_SUFFIX_BYTES:
        return (f"the file name of the {part!r:.40} part ({filename!r:.60}) has suffixes of more than "
                f"{MAX_SUFFIX_BYTES} bytes (everything after its first dot)")
    return None


def _parser(content_type: bytes, fields: _Fields) -> Any:
    """A streaming parser for the body's form encoding that reports to ``fields``; None for other bodies."""
    ctype, options = parse_options_header(content_type)
    if ctype == b"application/x-www-form-urlencoded":
        fields.urlencoded = True
        return QuerystringParser({"on_field_start": fields.start, "on_field_name": fields.name_part,
                                  "on_field_data": fields.data, "on_field_end": fields.end})
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        return None
    try:  # Starlette decodes the parts in the body's charset (latin-1 when it does not know it)
        fields.codec = codecs.lookup(options.get(b"charset", b"utf-8").decode("latin-1")).name
    except LookupError:
        fields.codec = "latin-1"
    part_header: dict[str, bytearray] = {}

    def header_field(d: bytes, s: int, e: int) -> None:
        part_header.setdefault("field", bytearray()).extend(d[s:e])

    def header_value(d: bytes, s: int, e: int) -> None:
        part_header.setdefault("value", bytearray()).extend(d[s:e])

    def header_end() -> None:
        if bytes(part_header.get("field", b"")).lower() == b"content-disposition":
            options = parse_options_header(bytes(part_header.get("value", b"")))[1]
            name, filename = options.get(b"name", b""), options.get(b"filename")
            fields.name_part(name, 0, len(name))
            if filename is not None and not fields.error:
                fields.error = _file_name_error(decode_as_starlette(name, fields.codec),
                                                decode_as_starlette(filename, fields.codec))
        part_header.pop("field", None), part_header.pop("value", None)

    def part_begin() -> None:
        part_header.clear()
        fields.start()

    return MultipartParser(options[b"boundary"], {
        "on_part_begin": part_begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_part_data": fields.data, "on_part_end": fields.end})


class FormFieldCheck:
    """Args: ``app``: the wrapped ASGI app; ``fields``: the form fields that must hold a JSON object;
    ``max_field_bytes``: the most bytes kept of one such field (a larger one is refused)."""

    def __init__(self, app: Any, fields: Sequence[str] = ("params", "info"), max_field_bytes: int = 1 << 20) -> None:
        self.app, self.fields, self.max_field_bytes = app, tuple(fields), int(max_field_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        refused = INFER_REFUSED if path_parts(scope)[0] == "infer" and scope.get("method") == "POST" else None
        fields = _Fields(self.fields, self.max_field_bytes, refused=refused)
        parser = _parser(header(scope, b"content-type"), fields)
        if parser is None:
            await self.app(scope, receive, send)
            return

        async def checked_receive() -> dict:
            message = await receive()
            if message.get("type") == "http.request":
                try:
                    parser.write(message.get("body", b""))
                    if not message.get("more_body", False):
                        parser.finalize()
                except Exception:  # noqa: BLE001 - a body the parser cannot read: the endpoint's parsing answers
                    pass
                if fields.error:
                    raise FormFieldError(fields.error)
            return message

        await self.app(scope, checked_receive, send)
