"""The OHIF viewer at ``/``: its prebuilt files, and an ``app-config.js`` naming our DICOMweb.

``scripts/viewer`` unpacks the ``dist/`` of the npm package ``@ohif/app`` into the
folder that ``web.viewer`` names; `ViewerFiles` serves that folder, with three
differences from a plain folder:

- ``/app-config.js`` is not the package's (which names a public demo server):
  `app_config` writes one whose only data source is this node's own DICOMweb,
  on the page's own origin, so that the viewer lists this archive's studies
  with no CORS involved.
- A path that is no file and whose last segment has no extension is one of the
  viewer's client routes (``/viewer?StudyInstanceUIDs=...``, ``/segmentation``)
  and gets ``index.html``, as the package's ``_redirects`` asks of a server; a
  missing name with an extension is 404, so that a missing script is not
  answered with HTML.
- Nothing outside the folder, no dotfile, no folder listing.

Every answer is cross-origin isolated (``Cross-Origin-Opener-Policy`` and
``-Embedder-Policy``), which gives the viewer ``SharedArrayBuffer`` for its
volume viewports; everything it loads is same-origin, so nothing breaks.
Files whose names carry a content hash (the webpack bundles and WebAssembly
modules) may be cached for good; the others are revalidated at each load, so
that a viewer replaced by ``scripts/viewer`` is seen at once.
"""

from __future__ import annotations

import json
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from dicomd.web.streaming import ClientGone, PacedBody, send_file

INDEX: Final = "index.html"
APP_CONFIG: Final = "app-config.js"
DATA_SOURCE: Final = "dicomd"
CONTENT_TYPES: Final = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
}
"""Those a browser insists on (a module script or a streamed WebAssembly module of
another type is refused), whatever the system's MIME types say; the others are guessed."""
HASHED_NAME: Final = re.compile(rb"(^|\.)[0-9a-f]{16}\.")
"""A webpack output name with its content hash: ``app.bundle.0f6159c501addfe9.js``."""
CACHED_FOR_GOOD: Final = b"public, max-age=31536000, immutable"
REVALIDATED: Final = b"no-cache"
ISOLATION_HEADERS: Final = (
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
)


log = Logger()


def app_config(dicomweb_base: str) -> bytes:
    """The viewer's ``window.config``: one DICOMweb data source, ``dicomweb_base`` on the
    page's own origin, asked as our QIDO-RS and WADO-RS answer.

    QIDO-RS takes ``includefield``; ``fuzzymatching`` is honoured only by an archive
    with ``case_insensitive_names`` (else answered with a Warning), so the viewer
    does not ask for it and searches names with wildcards (``*name*``) instead.
    Images come from WADO-RS metadata and frames (``wadors``), thumbnails too, so
    that every stored transfer syntax the viewer's codecs decode shows; there is no
    WADO-URI and no static DICOMweb, and a study's series are read as they are
    opened.  No investigational-use dialog and no onboarding tour: the viewer
    opens onto the archive's study list.
    """
    settings: dict[str, Any] = {
        "routerBasename": None,
        "extensions": [],
        "modes": [],
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": DATA_SOURCE,
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": DATA_SOURCE,
                "configuration": {
                    "friendlyName": "dicomd",
                    "name": DATA_SOURCE,
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return (
        "// Made by dicomd (dicomd/web/viewer.py): the viewer reads this node's DICOMweb.\n"
        "window.config = (function (dicomweb) {\n"
        f"  const settings = {json.dumps(settings, indent=2)};\n"
        "  for (const source of settings.dataSources) {\n"
        "    Object.assign(source.configuration, {\n"
        "      qidoRoot: dicomweb,\n"
        "      wadoRoot: dicomweb,\n"
        "      wadoUriRoot: dicomweb,\n"
        "    });\n"
        "  }\n"
        "  return settings;\n"
        f"}})(window.location.origin + {json.dumps(dicomweb_base)});\n"
    ).encode()


class ViewerFiles(resource.Resource):
    """The viewer's folder below ``/``, its client routes, and our ``app-config.js``.

    A leaf: the whole rest of the path (``request.postpath``) names the file.
    Files go out at the client's pace, read in the reactor's threads a chunk at
    a time (`dicomd.web.streaming`), as WADO-RS sends instances.
    """

    isLeaf = True

    def __init__(self, folder: Path, dicomweb_base: str) -> None:
        super().__init__()
        self.folder = folder.resolve()
        self.config = app_config(dicomweb_base)

    def render_GET(self, request: server.Request) -> Any:
        for name, value in ISOLATION_HEADERS:
            request.setHeader(name, value)
        segments = [segment for segment in request.postpath if segment]
        if segments == [APP_CONFIG.encode()]:
            request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
            request.setHeader(b"cache-control", REVALIDATED)
            return self.config
        target = self.file_named(segments)
        if target is None:
            if segments and b"." in segments[-1]:
                return _not_found(request, "no such file in the viewer")
            target = self.folder / INDEX
        try:
            status = target.stat()
        except OSError:
            return _not_found(request, f"{self.folder} has no {INDEX}: see scripts/viewer")
        cached = HASHED_NAME.search(target.name.encode())
        request.setHeader(b"cache-control", CACHED_FOR_GOOD if cached else REVALIDATED)
        request.setHeader(b"content-type", content_type(target.name).encode("ascii"))
        request.setHeader(b"content-length", b"%d" % status.st_size)
        if request.setLastModified(status.st_mtime) is http.CACHED or request.method == b"HEAD":
            return b""
        defer.ensureDeferred(_send(request, target, status.st_size))
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def file_named(self, segments: list[bytes]) -> Path | None:
        """The file of the folder the segments name, or None (none, or not a plain name)."""
        names = []
        for segment in segments:
            name = segment.decode("utf-8", "replace")
            if name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
                return None
            names.append(name)
        if not names:
            return None
        path = self.folder.joinpath(*names)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.folder) or not resolved.is_file():
            return None
        return resolved


def content_type(name: str) -> str:
    """The media type of a file of the viewer, by its extension."""
    extension = Path(name).suffix.lower()
    guessed = CONTENT_TYPES.get(extension) or mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


async def _send(request: server.Request, path: Path, size: int) -> None:
    """Stream the file, then finish; a file that cannot be read cuts the answer short."""
    body = PacedBody(request)
    try:
        await send_file(body, request.site.reactor, path, 0, size)
    except ClientGone:
        return
    except OSError as error:
        log.warn("viewer: {path} cut short: {error}", path=path.name, error=str(error))
        if request.channel is not None:  # else gone already
            request.channel.transport.abortConnection()
        return
    finally:
        body.close()
    if not body.gone:
        request.finish()


def viewer_resource(folder: Path, dicomweb_base: str) -> resource.IResource:
    """What the site mounts at ``/`` for ``web.viewer``: `ViewerFiles`."""
    return ViewerFiles(folder, dicomweb_base)


def _not_found(request: server.Request, message: str) -> bytes:
    """404 with one line of text (none for ``HEAD``)."""
    body = message.encode("utf-8", "replace") + b"\n"
    request.setResponseCode(HTTPStatus.NOT_FOUND)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body
