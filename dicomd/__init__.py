"""dicomd: a DICOM daemon and library built on Twisted."""

from dicomd.dictionary import register_with_pydicom

__version__ = "0.1.0"

register_with_pydicom()
