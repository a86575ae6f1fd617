"""The built-in store handlers: ``archive`` keeps and indexes instances, ``print`` logs them."""

from dicomd.archive.handler import ArchiveHandler
from dicomd.archive.printer import PrintHandler

__all__ = ["ArchiveHandler", "PrintHandler"]
