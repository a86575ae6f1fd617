"""A small Part 10 file with every kind of line ``dicomd dump`` prints, and its exact listing.

The unit tests of ``dicomd.dump`` and the end-to-end tests of ``dicomd dump``
both judge the listing of this one file.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from dicomd.dump import MAX_VALUE_CHARS

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def file_meta(transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN) -> FileMetaDataset:
    """Meta information with our own implementation UID, so pydicom's version cannot change it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.3.999"
    meta.ImplementationVersionName = "DUMPTEST"
    return meta


def write_sample(path: Path) -> Path:
    """A small file with every kind of line: nested sequences, a long value, binary, private."""
    code = Dataset()
    code.CodeValue = "121311"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Localizer"
    first, second = Dataset(), Dataset()
    first.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    first.ReferencedSOPInstanceUID = "1.2.3.4.6"
    second.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    second.ReferencedSOPInstanceUID = "1.2.3.4.7"
    second.PurposeOfReferenceCodeSequence = Sequence([code])

    dataset = Dataset()
    dataset.file_meta = file_meta()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.SOPClassUID = SECONDARY_CAPTURE
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.AccessionNumber = ""
    dataset.PatientName = "Müller^Jürgen"
    dataset.ImageComments = "Bemerkung: " + "é" * 60
    dataset.ReferencedImageSequence = Sequence([first, second])
    dataset.ReferencedStudySequence = Sequence([])
    dataset.add(DataElement(0x00181234, "LO", "mystery"))
    dataset.FrameIncrementPointer = 0x00181063
    dataset.add(DataElement(0x00090010, "LO", "ACME"))
    dataset.add(DataElement(0x00091001, "LO", "secret"))
    dataset.add(DataElement(0x00091002, "OB", b"\x00\x01\x02\x03"))
    dataset.Rows = 32
    dataset.Columns = 32
    dataset.PixelSpacing = ["0.5", "0.25"]
    dataset.BitsAllocated = 16
    dataset.RescaleSlope = "1"
    dataset.add(DataElement(0x7FE00010, "OW", bytes(2048)))
    dataset.save_as(path, enforce_file_format=True)
    return path


SAMPLE_LISTING = """\
# File Meta Information
(0002,0000) UL FileMetaInformationGroupLength  128
(0002,0001) OB FileMetaInformationVersion  <2 bytes>
(0002,0002) UI MediaStorageSOPClassUID  1.2.840.10008.5.1.4.1.1.7 (Secondary Capture Image Storage)
(0002,0003) UI MediaStorageSOPInstanceUID  1.2.3.4.5
(0002,0010) UI TransferSyntaxUID  1.2.840.10008.1.2.1 (Explicit VR Little Endian)
(0002,0012) UI ImplementationClassUID  1.2.3.999
(0002,0013) SH ImplementationVersionName  DUMPTEST
# Data Set
(0008,0005) CS SpecificCharacterSet  ISO_IR 192
(0008,0008) CS ImageType  ORIGINAL\\PRIMARY
(0008,0016) UI SOPClassUID  1.2.840.10008.5.1.4.1.1.7 (Secondary Capture Image Storage)
(0008,0018) UI SOPInstanceUID  1.2.3.4.5
(0008,0050) SH AccessionNumber  <empty>
(0008,1110) SQ ReferencedStudySequence  <0 items>
(0008,1140) SQ ReferencedImageSequence  <2 items>
  item 1
    (0008,1150) UI ReferencedSOPClassUID  1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)
    (0008,1155) UI ReferencedSOPInstanceUID  1.2.3.4.6
  item 2
    (0008,1150) UI ReferencedSOPClassUID  1.2.840.10008.5.1.4.1.1.2 (CT Image Storage)
    (0008,1155) UI ReferencedSOPInstanceUID  1.2.3.4.7
    (0040,A170) SQ PurposeOfReferenceCodeSequence  <1 item>
      item 1
        (0008,0100) SH CodeValue  121311
        (0008,0102) SH CodingSchemeDesignator  DCM
        (0008,0104) LO CodeMeaning  Localizer
(0009,0010) LO PrivateCreator  ACME
(0009,1001) LO Private tag  secret
(0009,1002) OB Private tag  <4 bytes>
(0010,0010) PN PatientName  Müller^Jürgen
(0018,1234) LO Unknown  mystery
(0020,4000) LT ImageComments  Bemerkung: {cut}… (132 bytes)
(0028,0009) AT FrameIncrementPointer  (0018,1063)
(0028,0010) US Rows  32
(0028,0011) US Columns  32
(0028,0030) DS PixelSpacing  0.5\\0.25
(0028,0100) US BitsAllocated  16
(0028,1053) DS RescaleSlope  1
(7FE0,0010) OW PixelData  <2048 bytes>
""".replace("{cut}", "é" * (MAX_VALUE_CHARS - len("Bemerkung: ")))
"""The sample's listing: the comment is cut after 64 characters and reports 132 bytes (UTF-8)."""
