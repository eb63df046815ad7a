"""Parsing XML from the network (sans-I/O): every document through defusedxml, a refusal as a ProtocolError.

DTDs are refused by expat's own DOCTYPE, entity and external-reference handlers (defusedxml), so
the refusal holds in every encoding expat reads, a UTF-16 body included: a check on the raw bytes
for ``<!DOCTYPE`` does not see one written in UTF-16. Size limits stay with each caller, which
knows its document.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

from companion.errors import ProtocolError


def parse_xml(data: bytes | str, where: str) -> ET.Element:
    """The root element of ``data``; ProtocolError naming ``where`` for a DTD, an entity or bad XML."""
    try:
        return DefusedET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        # No DTD is ever needed by the Plex documents we read; expansion (billion laughs) and
        # external fetches (XXE) start there.
        raise ProtocolError(f"{where}: DOCTYPE and entity declarations are not accepted") from exc
    except ET.ParseError as exc:
        raise ProtocolError(f"{where}: malformed XML ({exc})") from exc
    except (ValueError, LookupError) as exc:  # e.g. an encoding declaration expat does not know
        raise ProtocolError(f"{where}: malformed XML ({exc})") from exc
