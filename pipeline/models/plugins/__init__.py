"""The plugin layer: how the runner drives a model (registry, Adapter spec, user models by
`_target_`, the built-in models' config classes and adapters). The only part of models/ that
knows the study's config."""
