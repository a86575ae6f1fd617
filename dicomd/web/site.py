"""The HTTP site: DICOMweb under ``/dicom-web``, ``/metrics``, and the viewer at ``/``.

Each DICOMweb route authenticates the request (`dicomd.web.auth`), asks the
node's rules whether its user may do the route's operation (QIDO-RS ``find``,
WADO-RS ``get``, STOW-RS ``store``), then calls its service module
(`dicomd.web.qido`, `wado`, `stow`), which writes the answer or returns its
body.  A `WebError` from any of them becomes its status and one line of
text; anything else is a defect, logged with its traceback and answered 500.

In front of the routes, every answer gets the CORS headers of its origin
(`dicomd.web.cors`) and ``X-Content-Type-Options: nosniff``; ``OPTIONS`` is
answered there, without credentials; and a request body longer than
``web.max_stow_length`` is refused (413) as soon as its length is known,
before any of it is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from klein import Klein
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from dicomd import metrics
from dicomd.uids import uid_problem
from dicomd.web import qido, stow, wado
from dicomd.web.auth import Authentication, unauthorized
from dicomd.web.context import WebContext, allowed, set_user
from dicomd.web.cors import ALLOWED_METHODS, add_cors_headers, answer_preflight, is_preflight
from dicomd.web.errors import WebError
from dicomd.web.metrics import metrics_resource, observe_request
from dicomd.web.viewer import viewer_resource

BASE: Final = "/dicom-web"
"""Where the DICOMweb services are (the viewer's configuration names it)."""
TEXT: Final = b"text/plain; charset=utf-8"
STUDY: Final = BASE + "/studies/<study_uid>"
SERIES: Final = STUDY + "/series/<series_uid>"
INSTANCE: Final = SERIES + "/instances/<instance_uid>"
IMAGE_KIND: Final = "<any(rendered, thumbnail):kind>"
Service = Callable[..., Awaitable[Any]]
"""A service module's function: ``(request, context, *what the path names)``."""
QUERY: Final = "find"
RETRIEVE: Final = "get"
STORE: Final = "store"
_METRIC_SERVICES: Final = {QUERY: "qido", RETRIEVE: "wado", STORE: "stow"}
"""The service each operation counts as in ``dicomd_operations_total``."""


class WebSite:
    """The routes, over one node's `WebContext`.

    ``viewer`` is the folder of the OHIF viewer's files (``web.viewer``), or None.
    """

    app = Klein()
    log = Logger()

    def __init__(self, context: WebContext, viewer: Path | None = None) -> None:
        self.context = context
        self.authentication = Authentication(context)
        self.metrics_files = metrics_resource(context)
        self.viewer_files = None if viewer is None else viewer_resource(viewer, BASE)

    def resource(self) -> resource.IResource:
        """The site's root resource: the front (CORS, OPTIONS) before the routes."""
        return _Front(self.app.resource(), self.context.cors_origins)

    # QIDO-RS (PS3.18 10.6)

    @app.route(BASE + "/studies", methods=["GET"])
    async def search_studies(self, request: IRequest) -> Any:
        return await self._serve(request, QUERY, qido.search, "STUDY", None, None)

    @app.route(BASE + "/series", methods=["GET"])
    async def search_series(self, request: IRequest) -> Any:
        return await self._serve(request, QUERY, qido.search, "SERIES", None, None)

    @app.route(BASE + "/instances", methods=["GET"])
    async def search_instances(self, request: IRequest) -> Any:
        return await self._serve(request, QUERY, qido.search, "IMAGE", None, None)

    @app.route(STUDY + "/series", methods=["GET"])
    async def search_study_series(self, request: IRequest, study_uid: str) -> Any:
        return await self._serve(request, QUERY, qido.search, "SERIES", uid(study_uid), None)

    @app.route(STUDY + "/instances", methods=["GET"])
    async def search_study_instances(self, request: IRequest, study_uid: str) -> Any:
        return await self._serve(request, QUERY, qido.search, "IMAGE", uid(study_uid), None)

    @app.route(SERIES + "/instances", methods=["GET"])
    async def search_series_instances(
        self, request: IRequest, study_uid: str, series_uid: str
    ) -> Any:
        return await self._serve(
            request, QUERY, qido.search, "IMAGE", uid(study_uid), uid(series_uid)
        )

    # WADO-RS (PS3.18 10.4)

    @app.route(STUDY, methods=["GET"])
    async def retrieve_study(self, request: IRequest, study_uid: str) -> Any:
        return await self._serve(request, RETRIEVE, wado.retrieve, uid(study_uid))

    @app.route(SERIES, methods=["GET"])
    async def retrieve_series(self, request: IRequest, study_uid: str, series_uid: str) -> Any:
        return await self._serve(request, RETRIEVE, wado.retrieve, uid(study_uid), uid(series_uid))

    @app.route(INSTANCE, methods=["GET"])
    async def retrieve_instance(
        self, request: IRequest, study_uid: str, series_uid: str, instance_uid: str
    ) -> Any:
        return await self._instance(request, wado.retrieve, study_uid, series_uid, instance_uid)

    @app.route(STUDY + "/metadata", methods=["GET"])
    async def study_metadata(self, request: IRequest, study_uid: str) -> Any:
        return await self._serve(request, RETRIEVE, wado.metadata, uid(study_uid))

    @app.route(SERIES + "/metadata", methods=["GET"])
    async def series_metadata(self, request: IRequest, study_uid: str, series_uid: str) -> Any:
        return await self._serve(request, RETRIEVE, wado.metadata, uid(study_uid), uid(series_uid))

    @app.route(INSTANCE + "/metadata", methods=["GET"])
    async def instance_metadata(
        self, request: IRequest, study_uid: str, series_uid: str, instance_uid: str
    ) -> Any:
        return await self._instance(request, wado.metadata, study_uid, series_uid, instance_uid)

    @app.route(
        INSTANCE + "/frames/<frame_list>",
        methods=["GET"],
    )
    async def frames(
        self, request: IRequest, study_uid: str, series_uid: str, instance_uid: str, frame_list: str
    ) -> Any:
        return await self._instance(
            request, wado.frames, study_uid, series_uid, instance_uid, frame_list
        )

    @app.route(
        INSTANCE + "/bulkdata/<path:tag_path>",
        methods=["GET"],
    )
    async def bulkdata(
        self, request: IRequest, study_uid: str, series_uid: str, instance_uid: str, tag_path: str
    ) -> Any:
        return await self._instance(
            request, wado.bulkdata, study_uid, series_uid, instance_uid, tag_path
        )

    @app.route(INSTANCE + "/" + IMAGE_KIND, methods=["GET"])
    async def rendered_instance(
        self, request: IRequest, study_uid: str, series_uid: str, instance_uid: str, kind: str
    ) -> Any:
        return await self._instance(
            request, wado.rendered, study_uid, series_uid, instance_uid, None, kind == "thumbnail"
        )

    @app.route(
        INSTANCE + "/frames/<frame>/" + IMAGE_KIND,
        methods=["GET"],
    )
    async def rendered_frame(
        self,
        request: IRequest,
        study_uid: str,
        series_uid: str,
        instance_uid: str,
        frame: str,
        kind: str,
    ) -> Any:
        return await self._instance(
            request,
            wado.rendered,
            study_uid,
            series_uid,
            instance_uid,
            frame_number(frame),
            kind == "thumbnail",
        )

    # STOW-RS (PS3.18 10.5)

    @app.route(BASE + "/studies", methods=["POST"])
    async def store(self, request: IRequest) -> Any:
        return await self._serve(request, STORE, stow.store, None)

    @app.route(STUDY, methods=["POST"])
    async def store_in_study(self, request: IRequest, study_uid: str) -> Any:
        return await self._serve(request, STORE, stow.store, uid(study_uid))

    @app.route(BASE + "/", branch=True, methods=["GET", "POST"])
    def unknown(self, request: IRequest) -> Any:
        """Below ``/dicom-web``, what no route names is not the viewer's."""
        raise NotFound()

    # The node's metrics, and the viewer

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: IRequest) -> Any:
        """Prometheus's scrape: credentials when the node requires them, no rule to meet."""
        set_user(request, await self.authentication.user(request))
        return self.metrics_files

    @app.route("/", branch=True, methods=["GET"])
    def viewer_app(self, request: IRequest) -> Any:
        """The viewer's files: static, public, holding no patient's data."""
        if self.viewer_files is None:
            raise WebError(HTTPStatus.NOT_FOUND, "no such resource (and no web.viewer is set)")
        return self.viewer_files

    # How every route ends

    @app.handle_errors(WebError)
    def web_error(self, request: IRequest, failure: Failure) -> bytes:
        error: WebError = failure.value  # type: ignore[assignment]
        for name, value in error.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return plain(request, error.status, error.message)

    @app.handle_errors(HTTPException)
    def routing_error(self, request: IRequest, failure: Failure) -> bytes:
        error: HTTPException = failure.value  # type: ignore[assignment]
        if isinstance(error, MethodNotAllowed):
            request.setHeader(b"allow", ", ".join(error.valid_methods or ()).encode("ascii"))
            return plain(request, HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed here")
        if isinstance(error, NotFound):
            return plain(request, HTTPStatus.NOT_FOUND, "no such resource")
        if isinstance(error, RequestRedirect):  # /dicom-web to /dicom-web/, say
            request.setHeader(b"location", error.new_url.encode("utf-8"))
        return plain(request, HTTPStatus(error.code or 400), error.name)

    @app.handle_errors(defer.CancelledError)
    def client_gone(self, request: IRequest, failure: Failure) -> None:
        """The client went away: nobody is left to answer."""

    @app.handle_errors(Exception)
    def defect(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure(
            "{method} {path} failed",
            failure,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:200],
        )
        return plain(request, HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the log)")

    async def _serve(
        self, request: IRequest, operation: str, service: Service, *arguments: Any
    ) -> Any:
        """Admit the request for ``operation``, then answer it with the service's function;
        counted in the node's metrics once its answer has gone, refusals too."""
        observe_request(request, _METRIC_SERVICES[operation], self.context.reactor)
        await self._admit(request, operation)
        return await service(request, self.context, *arguments)

    async def _admit(self, request: IRequest, operation: str) -> None:
        user = await self.authentication.user(request)
        set_user(request, user)
        if allowed(request, self.context, operation):
            return
        if user.name is None and self.context.authenticators:
            raise unauthorized(f"anonymous requests may not {operation}: sign in")
        who = f"user {user.name!r}" if user.name is not None else "an anonymous client"
        raise WebError(HTTPStatus.FORBIDDEN, f"{who} may not {operation}")

    async def _instance(
        self,
        request: IRequest,
        service: Service,
        study_uid: str,
        series_uid: str,
        instance_uid: str,
        *arguments: Any,
    ) -> Any:
        """A WADO-RS route of one instance: its three UIDs checked, then ``service``."""
        return await self._serve(
            request,
            RETRIEVE,
            service,
            uid(study_uid),
            uid(series_uid),
            uid(instance_uid),
            *arguments,
        )


def uid(text: str) -> str:
    """A UID from the path; `WebError` 400 when it cannot be one."""
    problem = uid_problem(text)
    if problem is not None:
        raise WebError(HTTPStatus.BAD_REQUEST, f"{text[:70]!r} is not a UID: it {problem}")
    return text


def frame_number(text: str) -> int:
    """A frame number from the path (1 for the first); `WebError` 400 otherwise."""
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise WebError(HTTPStatus.BAD_REQUEST, f"{text[:20]!r} is not a frame number")
    return int(text)


def plain(request: IRequest, status: int, message: str) -> bytes:
    """An answer of ``status`` whose body is one line of text."""
    body = message.encode("utf-8", "replace") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"content-type", TEXT)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Front(resource.Resource):
    """Before the routes: CORS headers on every answer, ``OPTIONS`` answered here."""

    isLeaf = True

    def __init__(self, routes: resource.IResource, origins: frozenset[str]) -> None:
        super().__init__()
        self.routes = routes
        self.origins = origins

    def render(self, request: server.Request) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        add_cors_headers(request, self.origins)
        if not _utf8(request.getRequestHostname()) or not _utf8(b"/".join(request.postpath)):
            return plain(request, HTTPStatus.BAD_REQUEST, "the path or Host is not UTF-8")
        if is_preflight(request):
            return answer_preflight(request, self.origins)
        if request.method == b"OPTIONS":
            request.setResponseCode(HTTPStatus.NO_CONTENT)
            request.setHeader(b"allow", ALLOWED_METHODS)
            return b""
        try:
            return self.routes.render(request)
        except HTTPException as refused:  # werkzeug's, before any route: a Host it refuses
            return plain(request, HTTPStatus(refused.code or 400), refused.name)


class BoundedRequest(server.Request):
    """A request whose body may not be longer than its site's ``max_body_length``: past it,
    413 and the connection closed, before any more of the body is kept."""

    _body_length = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.channel.site.max_body_length:
            self._refuse_body(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.content is None:
            return  # refused: the rest of the body is dropped while the connection closes
        self._body_length += len(data)
        if self._body_length > self.channel.site.max_body_length:
            self._refuse_body(self._body_length)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.content is None:
            return
        super().requestReceived(command, path, version)

    def _refuse_body(self, length: int) -> None:
        """Answer 413 at once, on the raw connection, and close it: waiting for the body to
        end to answer politely would take in all of it."""
        metrics.limit_hit("max_stow_length")
        most = self.channel.site.max_body_length
        if self.content is not None:
            self.content.close()
        self.content = None
        self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the refusal
        body = f"the body is {length} bytes or more, longer than {most} (web.max_stow_length)\n"
        encoded = body.encode("ascii")
        self.channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(encoded)).encode("ascii") + b"\r\n\r\n" + encoded
        )
        self.channel.loseConnection()


class WebServerSite(server.Site):
    """The site's factory: requests bounded by ``max_body_length``, no idle connection
    kept past ``timeout`` seconds."""

    requestFactory = BoundedRequest

    def __init__(
        self, root: resource.IResource, max_body_length: int, timeout: float, reactor: Any
    ) -> None:
        super().__init__(root, timeout=timeout, reactor=reactor)
        self.max_body_length = max_body_length
        self.noisy = False


class _Counted(ProtocolWrapper):
    """A connection the limit counts until it ends (once, however often that is reported)."""

    def connectionLost(self, reason: Failure) -> None:
        if self.wrappedProtocol is not None:
            super().connectionLost(reason)


class ConnectionLimit(WrappingFactory):
    """At most ``most`` HTTP connections open at once in this process: past that, each new
    one is answered 503 and closed, with one line in the log, so that a flood of idle
    connections cannot take every descriptor the node's associations need too."""

    log = Logger()
    protocol = _Counted

    def __init__(self, site: WebServerSite, most: int) -> None:
        super().__init__(site)
        self.most = most

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.most:
            self.log.warn(
                "HTTP connection from {peer} refused: {most} are open (web.max_connections)",
                peer=getattr(addr, "host", addr),
                most=self.most,
            )
            return _Busy()
        return super().buildProtocol(addr)


class _Busy(Protocol):
    """Answers 503 at once and closes."""

    def connectionMade(self) -> None:
        self.transport.write(BUSY)
        self.transport.loseConnection()


_BUSY_BODY: Final = b"too many connections are open; try again\n"
BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BUSY_BODY), _BUSY_BODY)
)
DEFAULT_MAX_CONNECTIONS: Final = 256


def web_site(
    context: WebContext,
    viewer: Path | None,
    timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> ConnectionLimit:
    """The factory of ``web.listen``: the `WebSite` routes over ``context``, with at most
    ``max_connections`` open at once, none idle longer than ``timeout`` seconds."""
    site = WebServerSite(
        WebSite(context, viewer).resource(), context.max_stow_length, timeout, context.reactor
    )
    return ConnectionLimit(site, max_connections)
