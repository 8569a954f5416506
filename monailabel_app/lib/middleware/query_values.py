"""ASGI middleware: query values MONAI Label's endpoints accept but then fail on with a 500 (HTTP 400 here).

- ``POST /infer/<model>?output=dicom_seg``: DICOM SEG needs a DICOMweb datastore; MONAI Label said so with a 500,
  after running the whole inference.
- ``GET``/``HEAD /datastore/image?check_sum=ALGO:DIGEST``: an algorithm other than SHA256, SHA512 or MD5 raised a
  ``ValueError`` (500).
- ``POST /infer/<model>?session_id=ID``: sessions are off here (``SSMISApp._load_sessions``), and MONAI Label then
  failed with an ``AttributeError`` (500).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from .request_guard import RequestGuard
from .request_parts import path_parts

__all__ = ["QueryValues", "refusal"]

#: the checksum algorithms MONAI Label's image download knows
CHECKSUMS = ("SHA256", "SHA512", "MD5")


def refusal(path: list[str], query: dict[str, list[str]]) -> str | None:
    """Why the query values of a request to ``path`` (its segments) are refused, or None."""
    if path[0] == "infer" and any(query.get("session_id", [])):
        return "session_id: sessions are off on this server; send the image's id (?image=) or upload the file"
    if path[0] == "infer" and "dicom_seg" in query.get("output", []):
        return ("output=dicom_seg needs a DICOMweb datastore; this app's is a folder of NIfTI volumes: ask for "
                "output=image or json")
    if path[:2] == ["datastore", "image"]:
        for value in query.get("check_sum", []):
            algo = value.split(":")[0] if ":" in value else "SHA256"
            if algo not in CHECKSUMS:
                return f"check_sum={value!r:.60}: the algorithm must be one of {list(CHECKSUMS)} (ALGO:DIGEST)"
    return None


class QueryValues(RequestGuard):
    """Args: ``app``: the wrapped ASGI app."""

    status_code = 400

    def refusal(self, scope: dict) -> str | None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return refusal(path_parts(scope), query)
