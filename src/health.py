"""Who the relay's own health check (`isdr echo`, the image's HEALTHCHECK) calls as.

A constant shared by the Store SCP, which admits this calling AE title whatever
ALLOWED_CALLING_AE_TITLES and ALLOWED_PEERS say, but only from this machine and only
for Verification (see `isdr.scp.access.is_health_check`), and by the echo that uses it.
It imports nothing of ours.
"""

from __future__ import annotations

HEALTH_CHECK_AE_TITLE = "ISDR_ECHO"
