"""The StreamChannel spec the operator passes in VEZA_RESOURCE_SPEC, under the names this package uses.

The model is the shared one (`veza_core.specs`, which the operator and the CRD use too): attributes
snake_case, JSON names camelCase as in the CRD; unknown fields ignored.
"""

from __future__ import annotations

from veza_core.specs import Delivery as Delivery
from veza_core.specs import Fallback as Fallback
from veza_core.specs import Hls as Hls
from veza_core.specs import ListenerLimits as Limits
from veza_core.specs import Playlist as Playlist
from veza_core.specs import Recording as Recording
from veza_core.specs import Relay as Relay
from veza_core.specs import Rendition as Rendition
from veza_core.specs import Source as Source
from veza_core.specs import StreamChannelWorkerSpec as ChannelSpec

__all__ = ["ChannelSpec", "Delivery", "Fallback", "Hls", "Limits", "Playlist", "Recording", "Relay", "Rendition",
           "Source"]
