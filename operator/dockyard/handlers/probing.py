"""Probes that tell an active replica from a standby: ``/livez`` answers while the process
runs (standby or active), ``/readyz`` only once this replica is active and kopf is ready — so a
Service (the admission webhook's) sends requests to the active replica only."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve(port: int, ready: asyncio.Event, host: str = "0.0.0.0") -> web.AppRunner:
    async def livez(_: web.Request) -> web.Response:
        return web.Response(text="alive\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="active\n")
        return web.Response(status=503, text="standby\n")

    app = web.Application()
    app.add_routes([web.get("/livez", livez), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
