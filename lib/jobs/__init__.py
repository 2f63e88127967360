"""What the batch runner starts, one module per job: a run as its stages (`run`), what-if
experiments (`whatif`), caricatures (`caricature`), retrieval evaluation (`retrieval`)
and training (`training`). Each reads or derives published runs through `lib.store`."""
