"""The answers to one C-FIND query: exactly the keys asked for, from a Dataset or from values.

A pending response's identifier holds the keys of the request's identifier,
each with the match's value or empty where it has none, sequence items key
by key (PS3.4 C.2.2.2.6), plus Query/Retrieve Level and Retrieve AE Title
for the Query/Retrieve models and the Specific Character Set its texts
need.  One `AnswerForm` per query compiles that rule from the identifier
once, and applies it to a match in either of two forms:

* a pydicom ``Dataset`` (`shape`, `encode_match`), what any find handler
  answers: the reference;
* plain values by keyword, as an index holds them (`encode`), encoded
  straight to the answer's bytes (`dicomd.dimse.elements`): what matches
  providing ``IEncodedMatches`` (the archive's) answer, at a tenth of the cost.

A property test proves `encode` gives the bytes that `encode_match` gives for
a Dataset of the same values.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from pydicom import Dataset
from pydicom.charset import convert_encodings, custom_encoders, python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from zope.interface import implementer

from dicomd import uids
from dicomd.dimse.datasets import deflate, encode_dataset, encoding
from dicomd.dimse.elements import PLAIN_VRS, TEXT_VRS, ElementEncoder, Value
from dicomd.interfaces import FindQuery, IAnswerEncoder

_QR_MODELS: Final = frozenset({uids.PATIENT_ROOT_FIND, uids.STUDY_ROOT_FIND})
ADDED_KEYS: Final = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"})
"""Keys of every answer that are the service's, never the match's."""
_CHARSET_TAG: Final = BaseTag(0x00080005)
_LEVEL_TAG: Final = BaseTag(0x00080052)
_RETRIEVE_AE_TAG: Final = BaseTag(0x00080054)
_UTF8: Final = "ISO_IR 192"

Charset = str | list[str]


@dataclass(frozen=True, slots=True)
class _Key:
    """A key of the identifier: its tag, its VR there (an empty answer's), and for a sequence
    the keys wanted in its items (None: the items whole)."""

    tag: BaseTag
    vr: str
    items: tuple[_Key, ...] | None = None


def _requested_keys(identifier: Dataset) -> tuple[_Key, ...]:
    keys = []
    for requested in identifier:
        if requested.keyword in ADDED_KEYS or requested.tag.element == 0:
            continue
        items = None
        if requested.VR == "SQ" and requested.value and len(requested.value[0]):
            items = _requested_keys(requested.value[0])
        keys.append(_Key(requested.tag, requested.VR, items))
    return tuple(keys)


@implementer(IAnswerEncoder)
class AnswerForm:
    """The answers to ``query`` from a node called ``ae_title``, in ``transfer_syntax``."""

    def __init__(self, query: FindQuery, ae_title: str, transfer_syntax: str) -> None:
        self.transfer_syntax = transfer_syntax
        self.keys = _requested_keys(query.identifier)
        self.added: tuple[tuple[BaseTag, str, str], ...] = ()
        if query.model in _QR_MODELS:
            self.added = ((_LEVEL_TAG, "CS", query.level), (_RETRIEVE_AE_TAG, "AE", ae_title))
        self.asked_charset: Charset | None = query.identifier.get("SpecificCharacterSet") or None
        self._values = _ValuesForm.of(self)

    @property
    def encodes_values(self) -> bool:
        """Whether `encode` can encode matches of this form (else it always answers None):
        false when a key's VR is ambiguous or the query's character set has code
        extensions, which only pydicom writes."""
        return self._values is not None

    def shape(self, match: Dataset) -> Dataset:
        """Exactly the requested keys, with the match's values (empty where it has none)."""
        answer = _shaped(self.keys, match)
        for tag, vr, value in self.added:
            answer.add(DataElement(tag, vr, value))
        texts = (str(e.value) for e in answer.iterall() if e.VR in TEXT_VRS and e.value)
        charset = answer_charset(self.asked_charset, texts)
        if charset:
            answer.SpecificCharacterSet = charset
        return answer

    def encode_match(self, match: Dataset) -> bytes:
        """The answer for a match given as a Dataset, encoded with pydicom."""
        return encode_dataset(self.shape(match), self.transfer_syntax)

    def encode(self, values: Mapping[str, Value | None]) -> bytes | None:
        """The answer for a match holding ``values`` (``IAnswerEncoder``): the bytes
        `encode_match` gives for a Dataset of them, each keyword's element of its dictionary
        VR; None when only pydicom can encode them."""
        return None if self._values is None else self._values.encode(values)


def _shaped(keys: tuple[_Key, ...], match: Dataset) -> Dataset:
    answer = Dataset()
    for key in keys:
        found = match.get(key.tag)
        if key.vr == "SQ":
            items = found.value if found is not None and found.VR == "SQ" else []
            shaped = [item if key.items is None else _shaped(key.items, item) for item in items]
            answer.add(DataElement(key.tag, "SQ", DicomSequence(shaped)))
        elif found is not None:
            answer.add(found)
        else:
            answer.add(DataElement(key.tag, key.vr, None))
    return answer


def answer_charset(asked: Charset | None, texts: Iterable[str]) -> Charset | None:
    """The query's own character set when it can carry the answer's texts, else UTF-8."""
    texts = list(texts)
    if all(text.isascii() for text in texts):
        return asked or None
    if asked and _can_encode(asked, texts):
        return asked
    return _UTF8


def _can_encode(charset: Charset, texts: list[str]) -> bool:
    names = [charset] if isinstance(charset, str) else list(charset)
    encodings = convert_encodings(names)
    if len(encodings) != 1:
        return False  # code extension (ISO 2022): leave it to UTF-8
    try:
        encoder = codecs.lookup(encodings[0])
        for text in texts:
            encoder.encode(text)
    except (LookupError, UnicodeEncodeError):
        return False
    return True


@lru_cache(maxsize=64)
def _codec(charset: str | None) -> str | None:
    """The Python codec pydicom writes texts in for a one-valued character set it knows
    by that exact name and encodes without escapes; None for any other."""
    if charset is None:
        return python_encoding[""]
    codec = python_encoding.get(charset)
    return None if codec is None or codec in custom_encoders else codec


_Slot = tuple[str | None, ElementEncoder | None, bytes]
"""An answer's element: the keyword whose value it holds (None: never one), the encoder
of such a value, and the element without one."""


class _ValuesForm:
    """An `AnswerForm` for matches given as values: its elements in tag order, each made
    once, empty, for the answers without a value, and the character set's place."""

    __slots__ = ("_asked", "_charset_at", "_charset_encoder", "_deflated", "_slots", "_texts")

    def __init__(
        self,
        asked: str | None,
        slots: list[_Slot],
        charset_at: int,
        charset_encoder: ElementEncoder,
        deflated: bool,
    ) -> None:
        self._asked = asked
        self._slots = slots
        self._charset_at = charset_at
        self._charset_encoder = charset_encoder
        self._deflated = deflated
        self._texts = tuple(
            keyword
            for keyword, encoder, _ in slots
            if keyword is not None and encoder is not None and encoder.vr in TEXT_VRS
        )

    @classmethod
    def of(cls, form: AnswerForm) -> _ValuesForm | None:
        asked = form.asked_charset
        if asked is not None and (not isinstance(asked, str) or _codec(asked) is None):
            return None
        if any(key.vr not in PLAIN_VRS for key in form.keys):
            return None
        implicit_vr, little_endian, deflated = encoding(form.transfer_syntax)
        by_tag: dict[BaseTag, _Slot] = {}
        for key in form.keys:
            keyword = None if key.vr == "SQ" else keyword_for_tag(key.tag) or None
            vr = dictionary_VR(key.tag) if keyword else None
            value_encoder = (
                ElementEncoder(key.tag, vr, implicit_vr, little_endian) if vr in PLAIN_VRS else None
            )
            empty = ElementEncoder(key.tag, key.vr, implicit_vr, little_endian).empty()
            by_tag[key.tag] = (keyword, value_encoder, empty)
        for tag, vr, value in form.added:
            fixed = ElementEncoder(tag, vr, implicit_vr, little_endian).encode(value, "latin_1")
            if fixed is None:
                return None
            by_tag[tag] = (None, None, fixed)
        charset_encoder = ElementEncoder(_CHARSET_TAG, "CS", implicit_vr, little_endian)
        tags = sorted(by_tag)
        charset_at = sum(tag < _CHARSET_TAG for tag in tags)
        slots = [by_tag[tag] for tag in tags]
        return cls(asked, slots, charset_at, charset_encoder, deflated)

    def encode(self, values: Mapping[str, Value | None]) -> bytes | None:
        texts = [
            value if isinstance(value, str) else "\\".join(map(str, value))
            for keyword in self._texts
            if isinstance(value := values.get(keyword), str | list | tuple)
        ]
        charset = answer_charset(self._asked, texts)
        assert charset is None or isinstance(charset, str)  # the asked one is, and UTF-8
        codec = _codec(charset)
        if codec is None:
            return None
        parts = []
        for keyword, encoder, empty in self._slots:
            value = None if keyword is None else values.get(keyword)
            if value is None:
                parts.append(empty)
                continue
            if encoder is None:
                return None
            element = encoder.encode(value, codec)
            if element is None:
                return None
            parts.append(element)
        if charset is not None:
            element = self._charset_encoder.encode(charset, "latin_1")
            if element is None:
                return None
            parts.insert(self._charset_at, element)
        data = b"".join(parts)
        return deflate(data) if self._deflated else data
