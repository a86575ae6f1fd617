"""``/metrics``: the node's Prometheus metrics (`dicomd.metrics`) over HTTP.

A scrape asks the archive how many instances its index holds (in the
archive's query threads), then writes the text in a thread of the reactor's
pool: with workers, prometheus-client reads every worker's files for it, and
neither belongs on the reactor thread.  An index that cannot be counted
leaves its gauge out of that scrape, with one line in the log.

`observe_request` counts a DICOMweb request as an operation of its service
(``qido``, ``wado``, ``stow``) once its answer has gone, whatever wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from dicomd import metrics
from dicomd.web.context import WebContext

Runner = Callable[..., defer.Deferred[Any]]
"""Runs a blocking function with its arguments off the reactor thread."""


class MetricsResource(resource.Resource):
    """Answers GET with every metric of the node, in Prometheus' text format."""

    isLeaf = True
    log = Logger()

    def __init__(self, index: metrics.IIndexSize | None, run_blocking: Runner) -> None:
        super().__init__()
        self.index = index
        self.run_blocking = run_blocking

    def render_GET(self, request: IRequest) -> Any:
        finished = request.notifyFinish()
        gone: list[bool] = []
        finished.addErrback(lambda _: gone.append(True))
        d = defer.ensureDeferred(self._scrape())

        def answer(body: bytes) -> None:
            if gone:
                return  # the scraper went away meanwhile
            request.setHeader(b"content-type", metrics.CONTENT_TYPE.encode("ascii"))
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            self.log.failure("writing the metrics failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET

    async def _scrape(self) -> bytes:
        extra = []
        if self.index is not None:
            try:
                extra.append(metrics.index_size(await self.index.indexed_instances()))
            except Exception as error:
                self.log.warn("the index size is left out of /metrics: {error}", error=error)
        body: bytes = await self.run_blocking(metrics.exposition, extra)
        return body


def observe_request(request: IRequest, service: str, clock: IReactorTime) -> None:
    """Count ``request`` as an operation of ``service`` (`dicomd.metrics.SERVICES`) when its
    answer has gone, with its duration from now: its status category from the HTTP status,
    ``cancel`` when the client went away first.  A streamed answer (WADO-RS) counts once
    its last byte is written, not when its route returns."""
    started = clock.seconds()

    def answered(_: object) -> None:
        metrics.observe_operation(service, status_category(request.code), clock.seconds() - started)

    def gone(_: object) -> None:
        metrics.observe_operation(service, "cancel", clock.seconds() - started)

    request.notifyFinish().addCallbacks(answered, gone)


def status_category(code: int) -> str:
    """The DIMSE status category an HTTP status stands for: 202 Accepted is STOW-RS's answer
    when some instances failed (a warning), 4xx and 5xx failures, the rest success."""
    if code >= HTTPStatus.BAD_REQUEST:
        return "failure"
    return "warning" if code == HTTPStatus.ACCEPTED else "success"


def metrics_resource(context: WebContext) -> MetricsResource:
    """The ``/metrics`` resource of the node ``context`` describes: the index size comes
    from its archive (the first of its plugins that provides `IIndexSize`)."""
    reactor = context.reactor

    def in_thread(function: Callable[..., Any], *arguments: Any) -> defer.Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *arguments)

    return MetricsResource(index_of(context), in_thread)


def index_of(context: WebContext) -> metrics.IIndexSize | None:
    """The archive among the node's plugins that can count its index, if there is one."""
    for plugin in (context.retrieve_source, *context.find_handlers, *context.store_handlers):
        if metrics.IIndexSize.providedBy(plugin):
            return plugin  # type: ignore[no-any-return]
    return None
