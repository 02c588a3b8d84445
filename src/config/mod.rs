//! Configuration: the TOML model, `[aws_xks_config]` compatibility, `config check`.

pub mod cli;
