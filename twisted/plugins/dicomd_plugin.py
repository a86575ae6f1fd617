"""Makes ``twistd dicomd`` exist.

``twistd --help`` imports every plugin module, so this one names ``dicomd.tap``
without importing it; that happens only when ``twistd dicomd`` runs.
"""

from twisted.application.service import ServiceMaker

dicomd = ServiceMaker("dicomd", "dicomd.tap", "DICOM archive node", "dicomd")
