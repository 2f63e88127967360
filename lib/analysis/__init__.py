"""What is measured of the vectors: projections (`reduce`) and the `atlas`, nearest
neighbours (`neighbours`), the gap metrics (`gap`), which image properties explain it
(`photometry`, `attribution`), feature visualisations (`caricature`) and the static
overlap `plots`."""
