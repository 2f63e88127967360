"""What comes in: images found, decoded, hashed and prepared (`images`), object boxes
(`boxes`) and a run's objects on its images (`objects`), given embeddings
(`embeddings`), the bundled examples (`example`), synthetic vectors for benchmarks
(`mixture`), and what-if's transforms of the synthetic images (`transforms`)."""
