"""The headers InferHub adds to Ollama's HTTP."""

# In responses, the node that answered; in requests to the local API, the node they must go to.
NODE_HEADER = "X-InferHub-Node"
# Node ids a request has passed through; a node that sees its own id is its own backend.
VIA_HEADER = "X-InferHub-Via"
# A request's id, taken from the client or made by the first node, carried to the peer and the backend,
# returned, logged and audited, so one request can be followed through the pool.
REQUEST_ID_HEADER = "X-Request-Id"
# `batch` marks a request that may wait: at every node it yields to interactive ones, which is any other.
PRIORITY_HEADER = "X-InferHub-Priority"
BATCH = "batch"
# On a peer's request for the status as a stream, the port of its own share API: the node followed
# follows it back at once, not only once it hears its record on mDNS.
SHARE_PORT_HEADER = "X-InferHub-Share-Port"
# The owner's control token, which the local API's control paths require (see control.py).
CONTROL_HEADER = "X-InferHub-Control"
