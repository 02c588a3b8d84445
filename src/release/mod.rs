//! KRP/1: the key-release service (`krs`), the boot agent, messages, policy signing, release log.

pub mod cli;
