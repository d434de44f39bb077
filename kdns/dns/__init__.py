"""DNS: the record schema, authoritative answers, the wire format and the listeners."""
