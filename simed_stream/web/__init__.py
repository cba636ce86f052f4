"""The live page and its JSON API (docs/live.md): `simed run`, `replay` and `demo` serve it with
`--web HOST:PORT`. It reads only what the live pipeline publishes (`live/view.py`); the
pipeline never imports it, and only the CLI starts it (`launch.py`).

    server.py    aiohttp in a thread of its own: binding, connection bounds, stalled clients
    access.py    the access token, the loopback Host check, requests in flight, security headers
    routes.py    the page and the API's answers        stream.py   the event stream (SSE)
    documents.py the JSON documents, from the view      images.py   PNGs of images, cached
    state.py     what the web thread keeps (limits, caches)
    launch.py    a command's page: address, token, the hold after the run
    static/      index.html, app.js, style.css (no build step, nothing fetched from elsewhere)
"""
