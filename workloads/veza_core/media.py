"""Opening audio that users send (uploads, live sources).

libavformat picks a demuxer by probing the bytes, and some demuxers open other files or URLs
named inside the data (concat, HLS playlists, image sequences): an upload could make the worker
read another file next to it, or fetch a URL. Only the demuxers of the containers Veza accepts
are allowed to probe.
"""

from __future__ import annotations

# Demuxer names as libavformat matches them against its names ("mov" covers mp4/m4a, "matroska" webm).
AUDIO_DEMUXERS = "mp3,ogg,aac,flac,wav,mov,matroska"
# `container_options` for av.open of untrusted audio.
UNTRUSTED_AUDIO = {"format_whitelist": AUDIO_DEMUXERS}
