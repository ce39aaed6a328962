//! `nixcast keygen`'s command line.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Key name, conventionally with a number to bump on rotation: `fleet-1`.
    #[arg(long)]
    name: String,
    #[arg(long)]
    secret_key_file: PathBuf,
    #[arg(long)]
    public_key_file: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    crate::keygen::keygen(&a.name, &a.secret_key_file, &a.public_key_file, a.force)
}
