"""The VR that pydicom's data dictionary gives a tag: how an implicit VR element is read.

The walker, the data set decoder and the archive's layout ask it for the same
few dozen tags of every instance, so the answer is cached; the cache is
bounded, because a peer chooses its private tags.
"""

from __future__ import annotations

import functools

from pydicom.datadict import dictionary_VR


@functools.lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    """The dictionary's VR of ``tag``, or "" for a tag it does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""
