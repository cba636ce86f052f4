"""The page and the API's answers (docs/live.md): read-only, each a small function of the
published view. The event stream is `stream.py`."""

from __future__ import annotations

import os
from importlib import resources

from aiohttp import web

from simed_stream.web import documents, images
from simed_stream.web.access import error
from simed_stream.web.state import STATE, PageState
from simed_stream.web.stream import ClientGone, events, write_within

STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
FILE_TYPES = {".star": "text/plain", ".json": "application/json", ".png": "image/png",
              ".mrcs": "application/octet-stream"}
API = {  # what `GET /api` lists
    "/api/status": "status.json's content, as last written",
    "/api/series": "every series kept: state, accounting, picks, resolution, links to its files",
    "/api/series/{key}": "one series, with its coverage map and every pick",
    "/api/series/{key}/overview.png": "its overview image",
    "/api/particles": "the newest phased particles, newest first",
    "/api/particles/{key}/lowres.png": "a particle's low-resolution crop of the overview",
    "/api/particles/{key}/phased.png": "a particle's phased image (sigma V)",
    "/api/rate?since=N": "frames/s, queue depth and lag, about once a second",
    "/api/resolution?since=N": "every phased particle's resolution estimate",
    "/api/messages?since=N": "warnings and errors the pipeline logged",
    "/api/events": "server-sent events: the above as they change",
    "/series/{key}/files/{name}": "a series' particles.star, particles_NNNN.mrcs, report.png, picks.json, result.json",
}


def add_routes(app: web.Application) -> None:
    get = app.router.add_get
    get("/", page)
    get("/favicon.ico", no_icon)
    get("/static/{name}", static)
    get("/api", api_index)
    get("/api/status", status)
    get("/api/series", series_list)
    get(r"/api/series/{key:\d{1,9}}", series_one)
    get(r"/api/series/{key:\d{1,9}}/overview.png", overview_png)
    get("/api/particles", particles)
    get(r"/api/particles/{key:\d{1,9}}/{kind:lowres|phased}.png", particle_png)
    get("/api/{name:rate|resolution|messages}", timeline)
    get("/api/events", events)
    get(r"/series/{key:\d{1,9}}/files/{name}", series_file)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


def _png(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="image/png", headers={"Cache-Control": "no-store"})


def _read_static(name: str) -> bytes:
    return resources.files("simed_stream.web").joinpath("static").joinpath(name).read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(body=_read_static("index.html"), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        return error(404, f"no static file {name!r}")
    return web.Response(body=_read_static(name), content_type=STATIC[name], charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def api_index(request: web.Request) -> web.Response:
    return _json(documents.encode(API))


async def status(request: web.Request) -> web.Response:
    body = request.app[STATE].status()
    return error(503, "no status yet: the pipeline is starting") if body is None else _json(body)


async def series_list(request: web.Request) -> web.Response:
    return _json(request.app[STATE].series())


def _series(request: web.Request):
    state: PageState = request.app[STATE]
    return state, state.view.find_series(int(request.match_info["key"]))


async def series_one(request: web.Request) -> web.Response:
    state, series = _series(request)
    if series is None:
        return error(404, f"no series {request.match_info['key']} (kept: the last {len(state.view.series)})")
    return _json(documents.encode(documents.series_detail(series, state.view.status or {})))


async def overview_png(request: web.Request) -> web.Response:
    state, series = _series(request)
    overview = None if series is None else series.overview
    if overview is None:
        return error(404, "no overview for this series (not arrived yet, or no longer kept: see its report.png)")
    return _png(state.pngs.get(("overview", series.key), lambda: images.png(overview)))


async def particles(request: web.Request) -> web.Response:
    return _json(request.app[STATE].particles())


async def particle_png(request: web.Request) -> web.Response:
    state: PageState = request.app[STATE]
    key, kind = int(request.match_info["key"]), request.match_info["kind"]
    found = [p for p in state.view.gallery if p.key == key]
    if not found:
        return error(404, f"particle {key} is not among the newest kept; its image is in the series' stack")
    image = found[0].image if kind == "phased" else found[0].image_lr
    return _png(state.pngs.get((kind, key), lambda: images.png(image)))


async def timeline(request: web.Request) -> web.Response:
    text = request.query.get("since", "0")
    if not (text.isascii() and text.isdigit()) or len(text) > 12:  # '²' is a digit to isdigit, not to int()
        return error(400, f"since must be a record number (0 or more), not {text!r}")
    return _json(request.app[STATE].timeline(request.match_info["name"], int(text))[0])


async def series_file(request: web.Request) -> web.StreamResponse:
    state, series = _series(request)
    name = request.match_info["name"]
    if series is None or series.folder is None or not documents.SERIES_FILES.match(name):
        return error(404, f"no file {name!r} for series {request.match_info['key']}")
    try:
        handle = open(series.folder / name, "rb")
    except OSError:
        return error(404, f"{name} is not (or no longer) in the series folder")
    with handle:
        response = web.StreamResponse(headers={
            "Content-Type": FILE_TYPES[name[name.rindex("."):]], "Cache-Control": "no-store",
            "Content-Disposition": f'{"inline" if name.endswith((".png", ".json")) else "attachment"}; filename="{name}"'})
        response.content_length = os.fstat(handle.fileno()).st_size
        await response.prepare(request)
        try:
            while chunk := handle.read(state.limits.file_chunk):
                await write_within(request, response, chunk, state.limits.stall_s)
            await response.write_eof()
        except ClientGone:
            pass
    return response
