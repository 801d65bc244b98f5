"""The shared runtime: configuration, logging, the gRPC server bootstrap, database access, the event bus
(transactional outbox and inbox consumers), money and errors. It knows no service."""
