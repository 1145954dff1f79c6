"""The Open Inference Protocol (KServe V2) over HTTP/REST."""
