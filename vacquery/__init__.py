"""vacquery: the VacQuery peer protocol (messages, codec, census, responder) and the `vac` tool."""
