"""The built-in store handlers: ``archive`` keeps and indexes instances, ``print`` logs them,
and `FolderHandler` keeps them in a plain folder (``dicomd scp --save``)."""

from dicomd.archive.folder import FolderHandler
from dicomd.archive.handler import ArchiveHandler
from dicomd.archive.printer import PrintHandler

__all__ = ["ArchiveHandler", "FolderHandler", "PrintHandler"]
