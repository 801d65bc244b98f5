"""OMO services. Each subpackage is one independently deployable gRPC service, except `runtime` (the shared
platform code every service is built on) and `cli` (the `omo` command that runs the stack)."""
