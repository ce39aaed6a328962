//! The subcommands of `nixcast-pull`, one module each: `run`, `rollback`,
//! `status`. `main.rs` parses the command line, sets up logging and hands
//! each its arguments; a command returns how it failed, and main tells it
//! once.

pub mod rollback;
pub mod run;
pub mod status;

/// How a command failed: its exit code, and what to tell.
pub struct Failure {
    pub code: u8,
    pub message: String,
}
