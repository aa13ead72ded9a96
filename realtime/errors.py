"""The root of every error the project raises on purpose.

``except VoiceGenderError`` catches any of them: bad audio (``AudioError``), an unusable model bundle
(``BundleError``), a client's refused stream (``ProtocolError``), a server's refusal seen by the client
(``ServerError``), an unreadable corpus (``offline.librispeech.DatasetError``), an export that does not
reproduce its model (``offline.export.ExportError``). Each also derives from the built-in exception it
always was (``ValueError`` or ``RuntimeError``), so existing ``except ValueError`` code keeps working.
"""
from __future__ import annotations


class VoiceGenderError(Exception):
    """An error with a message that says what went wrong and, where it can, what to do."""


class AudioError(VoiceGenderError, ValueError):
    """Input audio that cannot be used, with a message that says why (``realtime.audio`` re-exports it)."""
