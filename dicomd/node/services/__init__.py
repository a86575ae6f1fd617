"""The DIMSE services of the SCP side, one module each."""
