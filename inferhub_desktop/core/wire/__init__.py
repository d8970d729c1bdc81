"""The neutral layer: errors, the endpoint table, stream framing, Go-style JSON and error bodies, request
payloads, InferHub's headers and the bounded reading of JSON records. Every other part of the core may
import it; it imports nothing else of the project."""
