"""StreamChannel: a stream worker Deployment per channel, routed at /stream/<channel>.

Autoscaling scales on `veza_stream_listeners` (listeners per pod): replicas add
listener capacity, while one leader per channel does the encoding.
"""

from __future__ import annotations

from veza_core.specs import StreamChannelSpec

from .controller import Context, Key
from .workers import WorkerKind, reconcile

STREAM_WORKERS = WorkerKind(kind="StreamChannel", component="stream", spec_model=StreamChannelSpec,
                            path_prefix="/stream", load_metric="veza_stream_listeners")


async def reconcile_stream_channel(ctx: Context, key: Key) -> None:
    await reconcile(STREAM_WORKERS, ctx, key)
