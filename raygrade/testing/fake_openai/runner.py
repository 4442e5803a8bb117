"""An aiohttp application on its own event loop in a background thread (the fakes' lifecycle)."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from raygrade._optional import import_optional

if TYPE_CHECKING:
    from aiohttp import web
else:
    web = import_optional("aiohttp.web", "fake", "the fake OpenAI-compatible server")


class ThreadedApp:
    """Serves :meth:`make_app`'s application on ``host:port`` (0: a free port) from a daemon thread.

    Subclasses set ``host`` and ``port`` and implement :meth:`make_app`.
    """

    host: str
    port: int
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, the OpenAI client's base URL."""
        return f"http://{self.host}:{self.port}/v1"

    def make_app(self) -> web.Application:
        raise NotImplementedError

    def start(self):
        """Start listening; returns ``self`` once the socket is bound.

        Raises:
            RuntimeError: the server did not start within 10 s.
        """
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_app())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    async def _start_app(self) -> None:
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop listening and end the thread (a no-op when not started)."""
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)  # type: ignore[union-attr]
        self._loop = None
