"""Uploads: files stored in PostgreSQL while they stream, read from multipart bodies.

- Files are stored as they stream by `nexes.imports.store.UploadWriter` (shared with the
  CLI's `nexes import`).
- Streaming multipart/form-data: python-multipart's `MultipartParser` is a push parser
  with synchronous callbacks; the callbacks only record events, and the events of each
  block of the body are then replayed by async code that stores file data (Starlette's
  `request.form()` would spool whole files first). Two readers: the `file` field of
  POST /api/imports, and the GraphQL multipart request spec (`operations`, `map`, then
  the files) on POST /graphql.
- The endpoints: POST /api/imports, and the multipart requests nexes.http.graphql hands over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from nexes.auth.identity import ANONYMOUS
from nexes.errors import Code, NexesError, bad_input
from nexes.http import headers
from nexes.http.errors import error_payload, error_response, json_response
from nexes.imports.store import UploadWriter, abort_all
from nexes.imports.upload import StoredUpload, enqueue
from nexes.resolvers.ids import global_id

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)
T = TypeVar("T")


# Reading multipart bodies

WriterFactory = Callable[[str | None], UploadWriter]


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None


class PartEnd:
    pass


Event = PartStart | bytes | PartEnd
END = PartEnd()


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != headers.MULTIPART.encode() or not boundary:
        raise bad_input("a multipart/form-data request needs a boundary in its Content-Type")
    return boundary


def is_multipart(content_type: str) -> bool:
    return content_type.lower().startswith(headers.MULTIPART)


class FormEvents:
    """Feeds blocks of the body to the parser and returns the events each one produced."""

    def __init__(self, boundary: bytes) -> None:
        self._events: list[Event] = []
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self.finished = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self._events.append(bytes(data[start:end])),
            "on_part_end": lambda: self._events.append(END),
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise bad_input(f"the multipart boundary is unusable: {exc}") from None

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("utf-8", errors="replace").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(headers.CONTENT_DISPOSITION.key, ""))
        name = options.get(b"name")
        if name is None:
            raise bad_input("a multipart part has no Content-Disposition name")
        filename = options.get(b"filename")
        self._events.append(
            PartStart(name.decode("utf-8", "replace"), filename.decode("utf-8", "replace") if filename else None)
        )

    def _end(self) -> None:
        self.finished = True

    def feed(self, block: bytes) -> list[Event]:
        try:
            self._parser.write(block)
        except FormParserError as exc:
            raise bad_input(f"the multipart body is malformed: {exc}") from None
        events, self._events = self._events, []
        return events


class PartReader:
    """Reads a multipart body part by part; subclasses say what each part becomes.

    Every writer made is kept in `writers`, so that the caller can delete the uploads
    when the request fails (or when no operation used them).
    """

    def __init__(self, new_writer: WriterFactory, *, max_files: int = 1) -> None:
        self._new_writer = new_writer
        self._max_files = max_files
        self._files = 0
        self.writers: list[UploadWriter] = []
        self._current: UploadWriter | None = None

    async def read(self, request: Request) -> None:
        form = FormEvents(boundary_of(request.headers.get(headers.CONTENT_TYPE.key, "")))
        async for block in request.stream():
            for event in form.feed(block):
                if isinstance(event, PartStart):
                    self._count(event)
                    await self._begin(event)
                elif isinstance(event, bytes):
                    await self._data(event)
                else:
                    await self._end()
        if not form.finished:
            raise bad_input("the multipart body ends before its closing boundary")
        self.done()

    def _count(self, part: PartStart) -> None:
        """Every part that carries a file counts, stored or skipped: refused past the cap."""
        if part.filename is None:
            return
        self._files += 1
        if self._files > self._max_files:
            raise too_many_files(self._max_files)

    async def _begin_file(self, part: PartStart) -> None:
        writer = self._new_writer(part.filename)
        self.writers.append(writer)
        await writer.start()
        self._current = writer

    async def _data(self, data: bytes) -> None:
        if self._current is not None:
            await self._current.write(data)
        else:
            self.field_data(data)

    async def _end(self) -> None:
        writer, self._current = self._current, None
        if writer is not None:
            self.file_stored(await writer.finish())
        else:
            self.field_end()

    async def _begin(self, part: PartStart) -> None:
        raise NotImplementedError

    def field_data(self, data: bytes) -> None:
        """Bytes of a part that is not a file (ignored unless a subclass wants them)."""

    def field_end(self) -> None:
        """The end of a part that is not a file."""

    def file_stored(self, upload: StoredUpload) -> None:
        """A file part is stored and finalized."""

    def done(self) -> None:
        """The closing boundary was read."""


class FileFieldReader(PartReader):
    """POST /api/imports: the one field named `file`; other fields are skipped."""

    upload: StoredUpload | None = None

    async def _begin(self, part: PartStart) -> None:
        if part.name != "file":
            return
        if self.writers:
            raise bad_input("the request has more than one 'file' field; send one file per import")
        await self._begin_file(part)

    def file_stored(self, upload: StoredUpload) -> None:
        self.upload = upload

    def done(self) -> None:
        if self.upload is None:
            raise bad_input("the multipart body has no field named 'file'", field="file")


class GraphQLMultipartReader(PartReader):
    """The GraphQL multipart request spec: `operations` (JSON), `map` (JSON), then the files,
    in that order; each file is placed in the operation's variables at the paths `map` gives."""

    def __init__(self, new_writer: WriterFactory, *, max_field_bytes: int, max_files: int = 1) -> None:
        super().__init__(new_writer, max_files=max_files)
        self._max_field_bytes = max_field_bytes
        self._field: bytearray | None = None
        self.operations: dict[str, Any] | None = None
        self._map: dict[str, list[list[str]]] | None = None
        self._pending: str | None = None
        self._stored: dict[str, StoredUpload] = {}

    async def _begin(self, part: PartStart) -> None:
        expected = "operations" if self.operations is None else "map" if self._map is None else None
        if expected is not None:
            if part.name != expected:
                raise bad_input(
                    f"the multipart field {expected!r} must come before {part.name!r} "
                    "(graphql-multipart-request-spec: operations, map, then the files)"
                )
            self._field = bytearray()
            return
        assert self._map is not None
        if part.name not in self._map:
            raise bad_input(f"the multipart file field {part.name!r} is not named in 'map'")
        if part.name in self._stored:
            raise bad_input(f"the multipart file field {part.name!r} appears twice")
        self._pending = part.name
        await self._begin_file(part)

    def field_data(self, data: bytes) -> None:
        if self._field is None:
            return
        self._field += data
        if len(self._field) > self._max_field_bytes:
            raise NexesError(Code.PAYLOAD_TOO_LARGE, f"a multipart field is larger than {self._max_field_bytes} bytes")

    def field_end(self) -> None:
        raw, self._field = self._field, None
        if raw is None:
            return
        if self.operations is None:
            operations = _json(bytes(raw), "operations")
            if isinstance(operations, list):
                raise bad_input("batched operations are not supported; send one operation per request")
            if not isinstance(operations, dict):
                raise bad_input("'operations' must be a JSON object with a 'query'")
            self.operations = operations
        else:
            self._map = _paths(_json(bytes(raw), "map"), self.operations)

    def file_stored(self, upload: StoredUpload) -> None:
        assert self._pending is not None
        self._stored[self._pending] = upload
        self._pending = None

    def done(self) -> None:
        if self.operations is None or self._map is None:
            raise bad_input("the multipart request needs the fields 'operations' and 'map'")
        for key, paths in self._map.items():
            upload = self._stored.get(key)
            if upload is None:
                raise bad_input(f"'map' names the file {key!r}, which the request does not contain")
            for path in paths:
                _place(self.operations, path, upload)


def too_many_files(limit: int) -> NexesError:
    return NexesError(
        Code.PAYLOAD_TOO_LARGE,
        f"the request holds more than {limit} file(s) (NEXES_UPLOAD_MAX_FILES); send one request per file",
    )


def _json(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_input(f"'{what}' is not valid JSON") from None


def _paths(value: Any, operations: dict[str, Any]) -> dict[str, list[list[str]]]:
    """`map` validated: each file key names paths that exist in the operation's variables."""
    if not isinstance(value, dict):
        raise bad_input("'map' must be a JSON object of file field names to lists of paths")
    parsed: dict[str, list[list[str]]] = {}
    for key, paths in value.items():
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise bad_input(f"'map' entry {key!r} must be a non-empty list of paths such as 'variables.file'")
        parsed[key] = [p.split(".") for p in paths]
        for path in parsed[key]:
            _container(operations, path)
    return parsed


def _container(operations: dict[str, Any], path: list[str]) -> tuple[Any, str | int]:
    """The object or list holding the path's last step, and that step; else BAD_USER_INPUT."""
    dotted = ".".join(path)
    if len(path) < 2 or path[0] != "variables":
        raise bad_input(f"'map' path {dotted!r} must point into 'variables'")
    node: Any = operations
    for i, step in enumerate(path):
        key: str | int = step
        if isinstance(node, list):
            if not step.isdigit() or int(step) >= len(node):
                raise bad_input(f"'map' path {dotted!r} names no element of the operation's variables")
            key = int(step)
        elif not isinstance(node, dict) or step not in node:
            raise bad_input(f"'map' path {dotted!r} names no element of the operation's variables")
        if i == len(path) - 1:
            return node, key
        node = node[key]
    raise AssertionError("unreachable")


def _place(operations: dict[str, Any], path: list[str], upload: StoredUpload) -> None:
    container, key = _container(operations, path)
    container[key] = upload


# The endpoints


def _csrf_error(request: Request) -> Response | None:
    """Uploads need a non-simple header (Nexes' own, or either of Apollo Client's
    conventional two): a browser cannot send one cross-site without a CORS preflight."""
    if any(request.headers.get(h.key, "").strip() for h in headers.CSRF_HEADERS):
        return None
    names = ", ".join(h.name for h in headers.CSRF_HEADERS)
    message = f"uploads need one of the headers {names} (any non-empty value)"
    return json_response({"errors": [error_payload(Code.CSRF_HEADER_REQUIRED, message)]}, 400)


def _writer_factory(request: Request) -> WriterFactory:
    app = request.app.state

    def new_writer(filename: str | None) -> UploadWriter:
        return UploadWriter(
            app.router.write,
            filename=filename,
            max_bytes=app.settings.import_max_bytes,
            retention_days=app.settings.import_retention_days,
            created_by=getattr(request.state, "viewer", ANONYMOUS).subject,
        )

    return new_writer


async def graphql_multipart(request: Request, run: Callable[[Any], Awaitable[Response]]) -> Response:
    """The GraphQL multipart request spec: files stored as they stream, then `run` answers
    the `operations` (each file's `StoredUpload` in its variables); uploads it did not
    enqueue are deleted."""
    refused = _csrf_error(request)
    if refused is not None:
        return refused
    settings = request.app.state.settings
    reader = GraphQLMultipartReader(
        _writer_factory(request), max_field_bytes=settings.max_body_bytes, max_files=settings.upload_max_files
    )
    try:
        await reader.read(request)
    except (NexesError, ClientDisconnect) as exc:
        await abort_all(reader.writers)
        return _upload_failed(exc)
    except BaseException:
        await abort_all(reader.writers)
        raise
    try:
        return await run(reader.operations)
    finally:
        await abort_all(reader.writers, keep_enqueued=True)


async def imports(request: Request) -> Response:
    """POST /api/imports: a multipart field `file`, or the raw body (filename from ?filename=
    or Content-Disposition); stored, then enqueued. 202 with the job's id and status."""
    refused = _csrf_error(request)
    if refused is not None:
        return refused
    new_writer = _writer_factory(request)
    content_type = request.headers.get(headers.CONTENT_TYPE.key, "")
    writers: list[UploadWriter] = []
    try:
        if is_multipart(content_type):
            reader = FileFieldReader(new_writer, max_files=request.app.state.settings.upload_max_files)
            writers = reader.writers
            await reader.read(request)
            assert reader.upload is not None
            upload = reader.upload
        else:
            writer = new_writer(_raw_filename(request))
            writers.append(writer)
            upload = await _store_body(request, writer)
    except (NexesError, ClientDisconnect) as exc:
        await abort_all(writers)
        return _upload_failed(exc)
    except BaseException:
        await abort_all(writers)
        raise
    await enqueue(upload)
    return json_response({"id": global_id("ImportJob", upload.job_id), "status": "QUEUED"}, 202)


def _upload_failed(exc: NexesError | ClientDisconnect) -> Response:
    if isinstance(exc, NexesError):
        return error_response(exc)
    log.info("the client went away mid-upload; what was stored is deleted")
    return error_response(bad_input("the client disconnected before the upload was complete"))


def _raw_filename(request: Request) -> str | None:
    name = request.query_params.get("filename")
    if name:
        return name
    _, options = parse_options_header(request.headers.get(headers.CONTENT_DISPOSITION.key, ""))
    raw = options.get(b"filename")
    return raw.decode("utf-8", "replace") if raw else None


async def _store_body(request: Request, writer: UploadWriter) -> StoredUpload:
    await writer.start()
    async for block in request.stream():
        await writer.write(block)
    return await writer.finish()
