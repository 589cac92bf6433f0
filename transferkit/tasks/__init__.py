"""Tasks: a whole job in one call, built on transferkit's groups and runs.
The public names are at the top level (`transferkit.train_image_classifier`,
`ImageClassifierTask`, `ImageRecipe`)."""

__all__: list[str] = []
