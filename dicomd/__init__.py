"""dicomd: a DICOM daemon and library built on Twisted."""

__version__ = "0.1.0"
