"""Index storage: snapshots (lock, manifest, verify, publish), item store + filters, FAISS ANN, on-disk IVF, build."""
