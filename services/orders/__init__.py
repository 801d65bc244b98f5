"""Orders: placed through a store's online entry, credited to whoever brought the consumer, paid through the
provider's notification and followed until the cloud warehouse ships them."""
