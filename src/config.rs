//! Configuration: TOML file + `--set key=value` overrides. (to be written)
