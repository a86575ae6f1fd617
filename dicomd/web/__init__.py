"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS, PS3.18), the viewer and the metrics, on twisted.web.

`dicomd.web.site` routes each request to the module of its service; they all
see the node through one `dicomd.web.context.WebContext`: the same plugins
(find handlers, retrieve source, store handlers) and the same authentication
and authorization as its DIMSE services.
"""
