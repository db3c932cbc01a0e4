"""What the pipeline, training, export and the main job share at their command lines: one config
loader (YAML + `key=value` overrides -> typed dataclasses), one way to end on a user's mistake
(one line, exit 2 for usage/config, 1 for data), the run-directory lock, and worker lifetime."""
