"""What the daemons read from a fingerprint about its InferenceServer."""

from __future__ import annotations

from isdr.fingerprints.model import Fingerprint
from isdr.inference.client import Target


def target_of(fingerprint: Fingerprint) -> Target:
    """The fingerprint's model on its server, as the client takes it."""
    return Target(
        url=str(fingerprint.inference_server_url),
        api=fingerprint.inference_server_api,
        model=fingerprint.model_human_readable_id,
        token=fingerprint.token(),  # TokenUnavailable when its variable or file is missing
    )


def deletes_remotely(fingerprint: Fingerprint, default: bool) -> bool:
    """Whether the remote task is deleted: the fingerprint's `delete_remotely`, else
    ASK_INFERENCE_SERVER_TO_DELETE_TASK."""
    chosen = fingerprint.delete_remotely
    return default if chosen is None else chosen
