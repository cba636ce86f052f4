"""simed-stream/1, this project's own protocol (docs/protocol.md): its adapter for the receiver
and its simulator, the fake detector behind `simed detector` and `simed replay`."""
