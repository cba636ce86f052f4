"""DECTRIS detectors (ARINA, QUADRO, EIGER): stream v1 (multipart JSON + blobs) and stream v2 (one
CBOR map per message), their compressions, the adapter and a simulator speaking both."""
