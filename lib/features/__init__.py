"""Vectors from images: a model's feature levels (`backbones`), pooled (`pooling`) per
image (`sources.Images`) or per object (`objects.Objects`) by one extraction engine
(`engine.extract`), with the feature cache (`cache`) in front."""
