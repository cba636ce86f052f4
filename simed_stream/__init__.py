"""simED-stream: live processing of single-molecule electron diffraction scans."""

__version__ = "0.1.0"
