"""The gateway's one exception tree lives in `protocols.errors` (wire formats own error bodies);
re-exported here for the modules that think of it as the gateway's."""

from protocols.errors import GatewayError, bad_request, error_body

__all__ = ["GatewayError", "bad_request", "error_body"]
